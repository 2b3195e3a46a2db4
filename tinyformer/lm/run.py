"""Language-model runs: token files + a tokenizer wired into the Trainer (what `tinyformer train` runs for a
config with a `data` section). Everything is checked before the run directory is touched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tinyformer.data.tokenfile import check_token_file, open_token_file, token_file_identity
from tinyformer.errors import TinyformerError
from tinyformer.lm.abacus import AbacusBatches, TextPositions, generate_kwargs, text_positions
from tinyformer.lm.rows import RowBatches, line_end_ids, row_eval_batches, row_spans
from tinyformer.lm.sampler import TokenFileBatches, eval_batches
from tinyformer.model import ModelConfig
from tinyformer.model.hf import import_hf
from tinyformer.train import rundir
from tinyformer.train.config import RunConfig, TrainConfig
from tinyformer.train.evaluation import LossEvaluation
from tinyformer.train.runtime import Runtime
from tinyformer.train.start import start_run

DEFAULT_RUN_DIR = "runs/run"


def with_data_vocab(cfg: RunConfig, vocab_size: int | None) -> ModelConfig:
    """The model section with `vocab_size` from the data unless the config set one (a larger one pads)."""
    if vocab_size is None or "vocab_size" in cfg.model_keys:
        return cfg.model
    return dataclasses.replace(cfg.model, vocab_size=vocab_size)


def initial_weights(source: str, cfg: RunConfig) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(ModelConfig, state dict) of the model to fine-tune: an HF directory (config.json) or a tinyformer
    run/checkpoint. The model section may only change dropout: the shape is the source's."""
    path = Path(source)
    if not path.exists():
        raise TinyformerError(f"train.init_from {source} does not exist; pass an HF model directory or a run directory")
    if (path / "config.json").is_file():
        model = import_hf(path)
    else:
        model = rundir.load_model(path)
    model_cfg = model.config
    for key in sorted(cfg.model_keys):
        value = getattr(cfg.model, key)
        if key == "dropout":
            model_cfg = dataclasses.replace(model_cfg, dropout=value)
        elif getattr(model_cfg, key) != value:
            raise TinyformerError(
                f"model.{key} conflicts with train.init_from={source}, whose weights fix the model's shape; "
                "remove it from the model section (only model.dropout can change when fine-tuning)"
            )
    return model_cfg, model.state_dict()


def train_lm(cfg: RunConfig) -> dict[str, Any]:
    """A language-model run from a RunConfig: checks, run dir, model, samplers, Trainer.fit()."""
    data = cfg.data
    cfg = dataclasses.replace(cfg, run_dir=cfg.run_dir or DEFAULT_RUN_DIR, model_keys=cfg.model_keys)
    tokenizer = None
    if data.tokenizer:
        if not Path(data.tokenizer).is_dir():
            raise TinyformerError(f"data.tokenizer {data.tokenizer} is not a tokenizer directory; check the path")
        tokenizer = rundir.load_tokenizer(data.tokenizer, "data.tokenizer")
    if not data.train:
        raise TinyformerError("data.train is not set; pass data.train=PATH.bin (make one with `tinyformer data prepare`)")
    train_file = open_token_file(data.train)  # each token file's sidecar is read once, here, and passed along
    train_meta = train_file.meta
    init_state = None
    if cfg.train.init_from:
        model_cfg, init_state = initial_weights(cfg.train.init_from, cfg)
    else:
        model_cfg = with_data_vocab(cfg, tokenizer.vocab_size if tokenizer is not None else train_meta.get("vocab_size"))
    if tokenizer is not None and tokenizer.vocab_size > model_cfg.vocab_size:
        raise TinyformerError(
            f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} ids; "
            f"set model.vocab_size >= {tokenizer.vocab_size} (or leave it unset to take the tokenizer's)"
        )
    seq_len = cfg.train.seq_len or model_cfg.max_seq_len
    if seq_len > model_cfg.max_seq_len and model_cfg.scheme.has_table:
        raise TinyformerError(f"train.seq_len={seq_len} exceeds model.max_seq_len={model_cfg.max_seq_len}")
    fingerprint = tokenizer.fingerprint if tokenizer is not None else train_meta.get("tokenizer_fingerprint")
    check_token_file(train_file, model_cfg.vocab_size, fingerprint, "train")
    if cfg.train.target_loss is not None and not data.val:
        raise TinyformerError("train.target_loss is compared with the validation loss: set data.val=FILE.bin")
    val_file = open_token_file(data.val) if data.val else None
    if val_file is not None:
        check_token_file(val_file, model_cfg.vocab_size, fingerprint, "val")
        if val_file.n_tokens < seq_len + 1:
            raise TinyformerError(
                f"data.val {data.val} has {val_file.n_tokens} tokens, fewer than one window of {seq_len + 1}; "
                "use a longer validation file or a smaller train.seq_len"
            )
    resolved = dataclasses.replace(cfg, model=model_cfg)
    positions = text_positions(model_cfg, tokenizer, data.digits)  # digit indices; None for most schemes
    ends = line_end_ids(tokenizer, train_meta.get("eot_id")) if data.sampling == "rows" else None
    for file in filter(None, (train_file, val_file) if ends is not None else ()):
        row_spans(file, ends, seq_len)  # every row fits: checked before anything is written

    def build(rt: Runtime, micro: int):
        where = {"rank": rt.info.rank, "world_size": rt.info.world_size}
        if ends is not None:
            source = RowBatches(train_file, micro, seq_len, ends, seed=cfg.train.seed, **where)
        else:
            source = TokenFileBatches(train_file, micro, seq_len, sampling=data.sampling, seed=cfg.train.seed,
                                      shuffle=data.shuffle, **where)
        if positions is not None:
            table = model_cfg.position_table_size if model_cfg.scheme.trained_at_random_offsets else None
            source = AbacusBatches(source, positions, table, cfg.train.seed)
        evaluation = None
        if val_file is not None:
            def val_batches():
                if ends is not None:
                    batches = row_eval_batches(val_file, micro, seq_len, ends, max_tokens=data.eval_tokens,
                                               seed=cfg.train.seed, **where)
                else:
                    batches = eval_batches(val_file, micro, seq_len, max_tokens=data.eval_tokens,
                                           seed=cfg.train.seed, **where)
                return positions.add_to(batches) if positions is not None else batches

            evaluation = LossEvaluation(val_batches, val_file.meta.get("bytes_per_token"))
        sample_fn = lm_sampler(tokenizer, cfg.train, model_cfg, positions) if tokenizer is not None else None
        return source, evaluation, sample_fn

    def same_tokenizer(run_path: Path) -> None:
        """A resume keeps the tokenizer the run trained with (its token files may still be the same)."""
        saved = rundir.read_tokenizer(run_path) if tokenizer is not None else None
        if saved is not None and saved.fingerprint != tokenizer.fingerprint:
            raise TinyformerError(
                f"cannot resume {run_path}: it was trained with another tokenizer than {data.tokenizer}; "
                "use the run's data or start a new run_dir"
            )

    def write_extra(run_path: Path) -> None:
        if tokenizer is not None:
            rundir.write_tokenizer(run_path, tokenizer)

    identity = {"data.train": token_file_identity(train_file)}
    if val_file is not None:
        identity["data.val"] = token_file_identity(val_file)
    if positions is not None:
        identity["data.digits"] = data.digits
    return start_run(resolved, seq_len, build, init_state=init_state, write_extra=write_extra,
                     data_identity=identity, check_resume=same_tokenizer)


def lm_sampler(tokenizer, tcfg: TrainConfig, model_cfg: ModelConfig,
               positions: TextPositions | None = None) -> Callable[[torch.nn.Module, int], str]:
    def sample(model: torch.nn.Module, step: int) -> str:
        device = next(model.parameters()).device
        if tcfg.sample_prompt:
            prompt = tokenizer.encode(tcfg.sample_prompt, allowed_special="all")
        else:
            prompt = [tokenizer.eot_id if tokenizer.eot_id is not None else 0]
        prompt = prompt[-model_cfg.max_seq_len // 2 :]
        n_new = tcfg.sample_tokens
        if model_cfg.scheme.has_table:  # stay inside the position table
            n_new = max(1, min(n_new, model_cfg.position_table_size - len(prompt)))
        ids = torch.tensor([prompt], dtype=torch.long, device=device)
        out = model.generate(ids, n_new, temperature=tcfg.sample_temperature, top_k=tcfg.sample_top_k,
                             seed=tcfg.seed + step, vocab_limit=tokenizer.vocab_size,  # never a padding id
                             **generate_kwargs(positions, ids))
        return tokenizer.decode(out[0].tolist())

    return sample

