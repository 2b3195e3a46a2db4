"""The one run config: `{run_dir, resume, model, train, data | task, eval}`, typed all the way down.

Every run (a language model on token files, a synthetic-task run of the lab, the demo's runs) is a
`RunConfig`. `load_run_config(yaml, overrides)` is the one loader: a YAML file (or a packaged preset such
as the lab's), dotted `key=value` overrides on top, unknown keys named with the closest valid one. A
`model.preset` (gpt2 | llama) expands into its architecture switches before the section is typed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tinyformer.config import deep_merge, from_dict, parse_overrides, read_yaml, to_dict
from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_write
from tinyformer.model.config import PRESETS, ModelConfig

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"
DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
MAX_SEED = 2**62  # seeds are combined with counters and ranks; numpy and torch need them non-negative


def _at_least(section: str, obj: Any, low: float, *names: str, optional: bool = False) -> None:
    """Each named field is >= `low` (or None when `optional`), and finite: a one-line error otherwise."""
    for name in names:
        value = getattr(obj, name)
        if value is None and optional:
            continue
        if value is None or not math.isfinite(value) or value < low:
            kind = "an integer" if isinstance(value, int) else "a number"
            hint = " (or null)" if optional else ""
            raise TinyformerError(f"{section}.{name} must be {kind} >= {low:g}{hint}, got {value!r}")


DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([smh]?)")
SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_budget(value: str | None) -> float | None:
    """train.budget in seconds: `90` (seconds), `30s`, `5m`, `1.5h`; None for no budget. One line otherwise."""
    if value is None:
        return None
    match = DURATION.fullmatch(str(value).strip().lower())
    seconds = float(match[1]) * SECONDS[match[2]] if match else 0.0
    if not (math.isfinite(seconds) and seconds > 0):
        raise TinyformerError(f"train.budget={value!r} is not a training time; write a positive duration like "
                              "90 (seconds), 30s, 5m or 1.5h")
    return seconds


def _check_seed(where: str, seed: int) -> None:
    if not 0 <= seed < MAX_SEED:
        raise TinyformerError(f"{where} must be an integer from 0 to 2**62 - 1, got {seed}")


def _check_muon(cfg: TrainConfig) -> None:
    if not (math.isfinite(cfg.muon_lr) and cfg.muon_lr > 0):
        raise TinyformerError(f"train.muon_lr must be a positive number, got {cfg.muon_lr}")
    if not (math.isfinite(cfg.muon_momentum) and 0 <= cfg.muon_momentum < 1):
        raise TinyformerError(f"train.muon_momentum must be in [0, 1), got {cfg.muon_momentum}")
    if cfg.optimizer == "muon" and cfg.parallel == "fsdp":
        raise TinyformerError("train.optimizer=muon does not run under train.parallel=fsdp (its matrices are "
                              "sharded); use parallel=ddp or optimizer=adamw")
    if cfg.optimizer == "muon" and cfg.lr <= 0:
        raise TinyformerError(f"train.optimizer=muon scales train.muon_lr by the schedule's rate over train.lr, so "
                              f"train.lr must be positive, got {cfg.lr}")


@dataclass
class DataConfig:
    """Token files (`NAME.bin` + `NAME.json`) of a language-model run and how to draw windows from them."""

    train: str = ""  # path to the training token file (.bin)
    val: str | None = None  # path to the validation token file (.bin); None = no evaluation
    tokenizer: str | None = None  # tokenizer directory; its fingerprint must match the token files
    # random windows, in-order passes, or rows: one line per sequence (number sequences; tinyformer.lm.rows)
    sampling: Literal["random", "sequential", "rows"] = "random"
    shuffle: bool = True  # sequential sampling: shuffle window order each epoch (seeded)
    eval_tokens: int | None = None  # None = the whole validation file; else a fixed seeded subset of windows
    digits: str = "0123456789"  # model.position=abacus: the characters numbers are made of (add abcdef for hex)

    def __post_init__(self) -> None:
        _at_least("data", self, 1, "eval_tokens", optional=True)
        if not self.digits or not self.digits.isascii():
            raise TinyformerError(f"data.digits must be a non-empty string of ASCII characters, got {self.digits!r}")


@dataclass
class TaskConfig:
    """A synthetic task of the lab as the run's data: an endless seeded stream of examples."""

    name: str = "UR"  # a registered task (`tinyformer lengen train --help` lists them), e.g. add:base=16
    train_lengths: str = "1-50"  # task lengths drawn uniformly for training, LO-HI
    random_offset: bool | None = None  # random position offsets in training; None = on for learned/abacus/coupled
    # randomized positions (Ruoss et al., 2023), any scheme: each training example's ids are a sorted random
    # subset of [0, random_positions_to) (default: the longest evaluated input's positions); evaluation counts 0, 1, ...
    random_positions: bool = False
    random_positions_to: int | None = None
    seed: int | None = None  # seed of the training stream; None = train.seed (set it to vary the init alone)


@dataclass
class EvalConfig:
    """How a task run is evaluated: fixed seeded length bins, exact match, and the stop rule."""

    bins: list[str] = field(default_factory=lambda: ["1-50", "51-100", "101-150"])
    examples: int = 2000  # examples per bin
    batch_size: int = 256
    seed: int = 0  # fixed across runs, so every run is scored on the same examples
    stop_accuracy: float = 1.0  # stop once the training-range bin reaches it (> 1 = never)
    greedy: bool = True  # free-running greedy accuracy at the final evaluation
    greedy_examples: int | None = None  # per bin; None = all

    def __post_init__(self) -> None:
        if not self.bins:
            raise TinyformerError("eval.bins is empty; give at least one length bin such as [1-50]")
        _at_least("eval", self, 1, "examples", "batch_size")
        _at_least("eval", self, 1, "greedy_examples", optional=True)
        _at_least("eval", self, 0, "stop_accuracy")
        _check_seed("eval.seed", self.seed)


@dataclass
class TrainConfig:
    """Optimisation, precision, cadence of evaluation / checkpoints, and parallelism."""

    max_steps: int = 1000
    # wall-clock training time (90 = seconds, 30s, 5m, 1h; evaluations, checkpoints, samples not counted): the run
    # stops at the step that spends it and its learning rate decays over it (tinyformer.train.budget); max_steps
    # still caps it: the run ends at whichever comes first
    budget: str | None = None
    target_loss: float | None = None  # stop at the first evaluation whose val_loss is <= this (language models)
    # Fine-tuning: start from these weights (an HF GPT-2/Llama/MPT directory, or a tinyformer run or
    # checkpoint directory); the model's shape comes from them, the optimizer starts fresh.
    init_from: str | None = None
    stop_at_step: int | None = None  # end this invocation early, with a checkpoint (the schedule still uses max_steps)
    batch_size: int = 16  # sequences per optimizer step, summed over all processes and accumulation steps
    grad_accum: int = 1  # micro-batches per optimizer step (per process)
    seq_len: int | None = None  # None = model.max_seq_len
    lr: float = 3e-4
    min_lr: float | None = None  # None = lr / 10
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    # adamw, or muon: torch.optim.Muon on the blocks' hidden weight matrices, AdamW (lr, betas, eps) on the rest
    optimizer: Literal["adamw", "muon"] = "adamw"
    # Muon's peak rate and momentum, scaled by the schedule as train.lr is: 0.02 and 0.95 are Keller Jordan's
    # (kellerjordan.github.io/posts/muon, the modded-nanogpt speedruns' Muon)
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    grad_clip: float = 1.0  # 0 = no clipping (the norm is still logged)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA (Ampere+), fp32 else
    compile: bool = False
    # attention kernel for F.scaled_dot_product_attention; auto = torch's choice; fp32 = torch's choice on
    # float32 q, k, v under autocast (on a CPU the flash kernel is faster in float32 than in bf16 at head sizes
    # 32-64, bench/RESULTS.md). precision=auto on a CPU measures which is fastest for the run's shape.
    sdpa_backend: Literal["auto", "flash", "efficient", "math", "cudnn", "fp32"] = "auto"
    tf32: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int | None = None  # CPU threads for torch; None = torch's default (all cores)
    # On a CPU under glibc: freed memory stays with the process for the next step to reuse, instead of going
    # back to the OS and being faulted in again zeroed (`runtime.reuse_freed_memory`; TinyStories steps ~9%
    # faster, bench/RESULTS.md); the process keeps its peak memory. false leaves the allocator as it is.
    reuse_memory: bool = True
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
    # experiment trackers beside metrics.jsonl (tinyformer.train.trackers), each an extra: tensorboard, wandb, trackio
    loggers: list[Literal["tensorboard", "wandb", "trackio"]] = field(default_factory=list)
    tracker_project: str = "tinyformer"  # the wandb / trackio project; the run is named after its run_dir
    progress: bool = True
    parallel: Literal["none", "ddp", "fsdp"] = "none"
    dist_backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU
    # seconds a process waits for the others in one collective before the job ends with an error (a process
    # that failed or hangs), instead of the backend's 30 minutes
    dist_timeout: float = 300.0

    def __post_init__(self) -> None:
        _at_least("train", self, 1, "max_steps", "batch_size", "grad_accum")
        _at_least("train", self, 1, "stop_at_step", "seq_len", "threads", "sample_top_k", optional=True)
        _at_least("train", self, 0, "lr", "warmup", "weight_decay", "beta1", "beta2", "grad_clip", "eval_every",
                  "log_every", "ckpt_every", "keep_last", "early_stop_patience", "sample_tokens", "sample_temperature")
        _at_least("train", self, 0, "min_lr", "target_loss", optional=True)
        parse_budget(self.budget)
        for name in ("beta1", "beta2"):
            if getattr(self, name) >= 1:
                raise TinyformerError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise TinyformerError(f"train.eps must be a positive number, got {self.eps}")
        if self.peak_flops is not None and not (math.isfinite(self.peak_flops) and self.peak_flops > 0):
            raise TinyformerError(f"train.peak_flops must be a positive number of FLOP/s (or null), got {self.peak_flops}")
        _check_seed("train.seed", self.seed)
        _check_muon(self)
        if not DEVICE.fullmatch(self.device):
            raise TinyformerError(f"train.device={self.device!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
        if self.dist_backend not in ("auto", "gloo", "nccl", "mpi", "ucc"):
            raise TinyformerError(f"train.dist_backend={self.dist_backend!r}; use auto, gloo, nccl, mpi or ucc")
        if not (math.isfinite(self.dist_timeout) and self.dist_timeout > 0):
            raise TinyformerError(f"train.dist_timeout must be a positive number of seconds, got {self.dist_timeout}")
        if self.init_from is not None and not self.init_from.strip():
            raise TinyformerError("train.init_from is empty; pass a model or run directory, or leave it unset")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @property
    def budget_s(self) -> float | None:
        """train.budget in seconds (None: no budget)."""
        return parse_budget(self.budget)


@dataclass
class RunConfig:
    """One run: the model, what it trains on (`data` token files or a synthetic `task`), how, and where."""

    run_dir: str | None = None  # None: runs/run for `tinyformer train`, results/TASK/runs/... for `lengen`
    resume: Literal["never", "auto", "must"] = "auto"  # auto: resume when run_dir has a checkpoint
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig | None = None
    task: TaskConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # model fields the config set explicitly (the rest are defaults the data may replace: vocab_size from the
    # tokenizer or task, the position table from the longest evaluated input). Not part of the saved config.
    model_keys: frozenset = field(default=frozenset(), repr=False, compare=False, metadata={"internal": True})

    @property
    def kind(self) -> str:
        """'task' for a synthetic-task run, 'lm' for a language model on token files."""
        return "task" if self.task is not None else "lm"


def _expand_model(section: Any) -> tuple[dict[str, Any], frozenset]:
    """The model section as plain fields (a `preset` expanded under the given keys) and the keys given."""
    if section is None:
        section = {}
    if isinstance(section, ModelConfig):
        return dataclasses.asdict(section), frozenset(f.name for f in dataclasses.fields(ModelConfig))
    if not isinstance(section, Mapping):
        raise TinyformerError(f"model: expected a mapping of model fields, got {section!r}")
    fields = dict(section)
    preset = fields.pop("preset", None)
    given = frozenset(fields)
    if preset is not None:
        if preset not in PRESETS:
            raise TinyformerError(f"unknown model.preset {preset!r}; valid presets: {', '.join(PRESETS)}")
        fields = {**PRESETS[preset], **fields}
    return fields, given


def _old_tensorboard(data: dict[str, Any]) -> None:
    """train.tensorboard (before train.loggers; still in older runs' config.yaml): true = train.loggers=[tensorboard]."""
    train = data.get("train")
    if not isinstance(train, Mapping) or "tensorboard" not in train:
        return
    data["train"] = train = dict(train)
    if train.pop("tensorboard") in (True, "true"):
        loggers = train.get("loggers") or []
        train["loggers"] = [*loggers, "tensorboard"] if "tensorboard" not in loggers else loggers
        print("tinyformer: note: train.tensorboard=true is deprecated; use train.loggers=[tensorboard]",
              file=sys.stderr, flush=True)


def run_config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """A RunConfig from a plain (YAML) mapping; every section typed, unknown keys named."""
    data = dict(data)
    if "model_keys" in data:
        raise TinyformerError("unknown config key 'model_keys'; it is internal, remove it")
    if data.get("data") is not None and data.get("task") is not None:
        raise TinyformerError("the config has both a data section (token files) and a task section; a run "
                              "trains on one: remove one of them")
    _old_tensorboard(data)
    model_fields, given = _expand_model(data.pop("model", None))
    data["model"] = ModelConfig.from_dict(model_fields)
    cfg = from_dict(RunConfig, data)
    cfg.model_keys = given
    if cfg.data is None and cfg.task is None:
        cfg.data = DataConfig()
    return cfg


def load_run_config(path: str | os.PathLike | None, overrides: Iterable[str] = (),
                    base: str | os.PathLike | None = None) -> RunConfig:
    """`base` preset (optional), then the YAML file, then dotted overrides (`train.lr=1e-3`) -> RunConfig."""
    data = read_yaml(base) if base else {}
    if path:
        data = deep_merge(data, read_yaml(path))
    return run_config_from_dict(deep_merge(data, parse_overrides(overrides)))


def preset_path(name: str) -> Path:
    """A config preset shipped inside the package (tinyformer/presets/NAME.yaml)."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise TinyformerError(f"no packaged preset {name!r} in {PRESET_DIR}")
    return path


def saved_dict(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as written to RUN/config.yaml (internal fields left out, empty sections dropped)."""
    out = to_dict(cfg)
    out.pop("model_keys", None)
    for section in ("data", "task"):
        if out.get(section) is None:
            out.pop(section, None)
    if cfg.kind == "lm":
        out.pop("eval", None)
    return out


# what decides a run's result besides the model; a resume may not change them (how long, where and how
# visibly it runs may: max_steps, eval/ckpt cadence, device, threads, precision, parallel, progress, ...)
RESULT_KEYS = {
    "train": ("batch_size", "seq_len", "lr", "min_lr", "schedule", "warmup", "weight_decay", "beta1", "beta2", "eps",
              "grad_clip", "seed"),
    "data": ("sampling", "shuffle", "eval_tokens"),
    "task": ("name", "train_lengths", "random_offset", "random_positions", "random_positions_to"),
    "eval": ("bins", "examples", "seed"),
}


# what a setting added since was, in effect, for a checkpoint saved before it existed (so that checkpoint resumes)
SETTINGS_BEFORE = {"train.optimizer": "adamw", "model.qk_norm": False, "model.logit_softcap": None,
                   "model.zero_init_proj": False}


def result_settings(cfg: RunConfig, seq_len: int) -> dict[str, Any]:
    """The settings that decide the result of `cfg` (its model resolved), as dotted keys: kept in every
    checkpoint; a resume that changes one is refused, naming it."""
    out: dict[str, Any] = {f"model.{k}": v for k, v in to_dict(cfg.model).items()}
    resolved = {"train.seq_len": seq_len, "train.min_lr": cfg.train.final_lr}
    sections = {"train": cfg.train, "data": cfg.data if cfg.kind == "lm" else None,
                "task": cfg.task, "eval": cfg.eval if cfg.kind == "task" else None}
    for section, obj in sections.items():
        for key in RESULT_KEYS[section] if obj is not None else ():
            name = f"{section}.{key}"
            out[name] = resolved[name] if name in resolved else to_dict(getattr(obj, key))
    out["train.optimizer"] = cfg.train.optimizer
    if cfg.train.optimizer == "muon":  # an AdamW run does not read them
        out.update({"train.muon_lr": cfg.train.muon_lr, "train.muon_momentum": cfg.train.muon_momentum})
    return out


def save_run_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    with atomic_write(path) as f:
        yaml.safe_dump(saved_dict(cfg), f, sort_keys=False)
