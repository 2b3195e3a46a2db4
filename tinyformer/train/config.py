"""Configs of a training run: what to train on (DataConfig), how (TrainConfig), and the whole run (RunConfig).

The model section stays a plain mapping here and is turned into `tinyformer.model.ModelConfig` by the
trainer, so this module imports nothing heavy. Load with `load_run_config(yaml, overrides)`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from tinyformer.config import closest_hint, deep_merge, from_dict, parse_overrides, read_yaml
from tinyformer.errors import TinyformerError


@dataclass
class DataConfig:
    """Token files (`NAME.bin` + `NAME.json`) and how to draw windows from them."""

    train: str = ""  # path to the training token file (.bin)
    val: str | None = None  # path to the validation token file (.bin); None = no evaluation
    tokenizer: str | None = None  # tokenizer directory; its fingerprint must match the token files
    sampling: Literal["random", "sequential"] = "random"  # random windows, or in-order passes
    shuffle: bool = True  # sequential sampling: shuffle window order each epoch (seeded)
    eval_tokens: int | None = None  # None = the whole validation file; else a fixed seeded subset of windows


@dataclass
class TrainConfig:
    """Optimisation, precision, cadence of evaluation / checkpoints, and parallelism."""

    max_steps: int = 1000
    # Fine-tuning: start from these weights (an HF GPT-2/Llama/MPT directory, or a tinyformer run or
    # checkpoint directory); the model's shape comes from them, the optimizer starts fresh.
    init_from: str | None = None
    stop_at_step: int | None = None  # end this invocation early, with a checkpoint (the schedule still uses max_steps)
    batch_size: int = 16  # sequences per optimizer step, summed over all processes and accumulation steps
    grad_accum: int = 1  # micro-batches per optimizer step (per process)
    seq_len: int | None = None  # None = model.max_seq_len
    lr: float = 3e-4
    min_lr: float = 3e-5
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = no clipping (the norm is still logged)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA (Ampere+), fp32 else
    compile: bool = False
    # attention kernel for F.scaled_dot_product_attention; auto = torch's choice. On CPU with bf16 and short
    # contexts `math` is faster (bench/RESULTS.md): the fused CPU kernel's bf16 backward is slow there.
    sdpa_backend: Literal["auto", "flash", "efficient", "math", "cudnn"] = "auto"
    tf32: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int | None = None  # CPU threads for torch; None = torch's default (all cores)
    seed: int = 1337
    eval_every: int = 250  # steps; 0 = only at the end
    log_every: int = 10  # steps between metrics.jsonl train records
    ckpt_every: int = 500  # steps; a checkpoint is also written at the end and at every eval
    keep_last: int = 2  # checkpoints kept besides the best
    early_stop_patience: int = 0  # evaluations without improvement before stopping; 0 = never
    sample_tokens: int = 100  # tokens sampled at each evaluation of a language-model run; 0 = none
    sample_prompt: str = ""  # empty = start from the end-of-text token (or token 0)
    sample_temperature: float = 0.8
    sample_top_k: int | None = 50
    peak_flops: float | None = None  # for MFU; None = known device peak (CUDA) or a measured matmul ceiling
    tensorboard: bool = False
    progress: bool = True
    parallel: Literal["none", "ddp", "fsdp"] = "none"
    dist_backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU


@dataclass
class RunConfig:
    """One run: model + data + training, and where it lives."""

    run_dir: str = "runs/run"
    resume: Literal["never", "auto", "must"] = "auto"  # auto: resume when run_dir has a checkpoint
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields, plus optional `preset`
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_run_config(path: str | os.PathLike | None, overrides: Iterable[str] = ()) -> RunConfig:
    """YAML preset (optional) + dotted overrides (`train.lr=1e-3`) -> RunConfig; unknown keys are errors."""
    data = read_yaml(path) if path else {}
    cfg = from_dict(RunConfig, deep_merge(data, parse_overrides(overrides)))
    _check_model_keys(cfg.model)
    return cfg


def _check_model_keys(model: dict[str, Any]) -> None:
    """Catch a typo in the model section now, before any data is read (the section becomes a ModelConfig
    only once the tokenizer's vocab size is known)."""
    import dataclasses

    from tinyformer.model.config import ModelConfig

    valid = {f.name for f in dataclasses.fields(ModelConfig)} | {"preset"}
    for key in model:
        if key not in valid:
            raise TinyformerError(f"unknown config key 'model.{key}'; {closest_hint(str(key), valid)}")
