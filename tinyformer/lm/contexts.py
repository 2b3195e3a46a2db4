"""Validation loss and perplexity of a language model at several evaluation context lengths (1x, 2x, 4x, 8x
the training context): the question position-scheme papers ask of language models. Shared by
`tinyformer eval --seq-len 256,512` and `tinyformer compare`, so both give the same numbers.

Each length cuts the validation file into windows of that many tokens (or a seeded subset worth about
`max_tokens` targets) and averages the loss over every target. Learned positions stop where their table
ends: longer lengths are reported as not evaluated, with the reason.
"""

from __future__ import annotations

from typing import Any

import torch

from tinyformer.data.tokenfile import check_token_file, read_token_file
from tinyformer.errors import TinyformerError
from tinyformer.lm.abacus import run_positions_of
from tinyformer.lm.rows import line_end_ids, row_eval_batches, row_spans
from tinyformer.lm.sampler import eval_batches
from tinyformer.model.memory import forward_bytes, require_fits
from tinyformer.train.evaluation import loss_metrics, loss_over

FACTORS = (1, 2, 4, 8)


def parse_lengths(text: str) -> list[int]:
    """'256,512,1024' -> [256, 512, 1024], with a one-line error for anything else."""
    try:
        lengths = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise TinyformerError(f"--seq-len {text!r} is not a comma-separated list of integers (e.g. 256,512)") from None
    if not lengths or min(lengths) < 1:
        raise TinyformerError(f"--seq-len {text!r}: give one or more lengths of at least 1 token")
    return lengths


def position_limit(model_config) -> int | None:
    """The longest context a model's positions can represent: a learned table's size; None for schemes with
    no table (rope, alibi, nope, fire, sinusoidal) or whose ids do not grow with the context (abacus)."""
    return model_config.position_table_size if model_config.scheme.limits_context else None


def loss_at_lengths(model: torch.nn.Module, data: str, seq_lens: list[int], *, batch_size: int,
                    max_tokens: int | None, seed: int, device: torch.device, precision: str = "fp32",
                    positions=None, bytes_per_token: float | None = None) -> list[dict[str, Any]]:
    """One record per length: seq_len, loss, perplexity, bits_per_byte, tokens; or, when the length
    cannot be evaluated, the same keys with None and `stopped` saying why."""
    n_tokens = len(read_token_file(data)[0])
    limit = position_limit(model.config)
    out = []
    for seq_len in seq_lens:
        record: dict[str, Any] = {"seq_len": seq_len}
        if limit is not None and seq_len > limit:
            out.append({**record, **_blank(), "stopped": f"{model.config.position} positions end at {limit}"})
            continue
        if n_tokens < seq_len + 1:
            out.append({**record, **_blank(), "stopped": f"{data} has {n_tokens} tokens, fewer than one window"})
            continue
        try:
            require_fits(forward_bytes(model.config, batch_size, seq_len), device,
                         f"a forward of {batch_size} x {seq_len:,} tokens", "lower --seq-len or --batch-size")
        except TinyformerError as exc:
            out.append({**record, **_blank(), "stopped": str(exc)})
            continue
        batches = eval_batches(data, batch_size, seq_len, max_tokens=max_tokens, seed=seed)
        if positions is not None:
            batches = positions.add_to(batches)
        try:
            loss_sum, count = loss_over(model, batches, device, precision)
        except TinyformerError as exc:  # e.g. Abacus ids of a number longer than the table
            out.append({**record, **_blank(), "stopped": str(exc)})
            continue
        metrics = loss_metrics(loss_sum, count, bytes_per_token)
        out.append({**record, "loss": metrics["val_loss"], "perplexity": metrics["val_ppl"],
                    "bits_per_byte": metrics.get("val_bpb"), "tokens": metrics["val_tokens"]})
    return out


def _blank() -> dict[str, Any]:
    return {"loss": None, "perplexity": None, "bits_per_byte": None, "tokens": 0}


def evaluate_run(run, model, lengths: list[int] | None, device: torch.device, *, precision: str = "fp32",
                 data: str | None = None, batch_size: int | None = None, max_tokens: int | None = None,
                 seed: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`loss_at_lengths` for a language-model run (`rundir.Run`) with the defaults that reproduce what its
    training logged: its validation file, its evaluation subset (data.eval_tokens, seeded by train.seed) and
    batch size; `lengths` None = the training context. Returns (records, the settings used)."""
    cfg = run.config
    own_val = cfg.data.val if cfg is not None and cfg.data is not None else None
    data = data or own_val
    if not data:
        raise TinyformerError(f"{run.given} has no validation file in its config; pass --data FILE.bin")
    tok = run.tokenizer()
    meta = check_token_file(data, model.config.vocab_size, tok.fingerprint if tok is not None else None, "val")
    trained = int((cfg.train.seq_len if cfg is not None else None) or model.config.max_seq_len)
    # the run's own validation file: the subset and batches training evaluated on, unless told otherwise
    if max_tokens is None and own_val is not None and str(data) == str(own_val):
        max_tokens = cfg.data.eval_tokens
    if max_tokens == 0:  # `eval --max-tokens 0` (or all): the whole file
        max_tokens = None
    rows = cfg is not None and cfg.data is not None and cfg.data.sampling == "rows"
    seed = seed if seed is not None else (cfg.train.seed if cfg is not None else 0)
    batch_size = batch_size or (max(1, cfg.train.batch_size // cfg.train.grad_accum) if cfg is not None else 16)
    positions = run_positions_of(run, model)
    if rows:
        if lengths and lengths != [trained]:
            raise TinyformerError(f"{run.given} trained on one row per sequence (data.sampling=rows): it is "
                                  "evaluated row by row, so --seq-len does not apply")
        records = [_rows_loss(model, data, trained, tok, meta, batch_size, max_tokens, seed, device, precision,
                              positions)]
    else:
        records = loss_at_lengths(model, data, lengths or [trained], batch_size=batch_size, max_tokens=max_tokens,
                                  seed=seed, device=device, precision=precision, positions=positions,
                                  bytes_per_token=meta.get("bytes_per_token"))
    # what the whole file holds, so a "subset" that took every target is reported as the whole file
    if rows:
        spans = row_spans(data, line_end_ids(tok, meta.get("eot_id")), trained)
        file_targets = int((spans[:, 1] - spans[:, 0] - 1).sum())
    else:
        file_targets = int(meta["n_tokens"]) - 1
    return records, {"data": str(data), "trained_seq_len": trained, "max_tokens": max_tokens, "seed": seed,
                     "file_targets": file_targets,
                     "batch_size": batch_size, "checkpoint": str(run.checkpoint)}


def _rows_loss(model, data, seq_len, tok, meta, batch_size, max_tokens, seed, device, precision, positions):
    batches = row_eval_batches(data, batch_size, seq_len, line_end_ids(tok, meta.get("eot_id")),
                               max_tokens=max_tokens, seed=seed)
    if positions is not None:
        batches = positions.add_to(batches)
    loss_sum, count = loss_over(model, batches, device, precision)
    m = loss_metrics(loss_sum, count, meta.get("bytes_per_token"))
    return {"seq_len": seq_len, "loss": m["val_loss"], "perplexity": m["val_ppl"], "bits_per_byte": m.get("val_bpb"),
            "tokens": m["val_tokens"]}
