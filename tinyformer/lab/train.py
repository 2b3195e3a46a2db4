"""One length-generalization run: train a small model on a task stream, evaluate length bins, write a run dir.

The loop is the plain one (AdamW from tinyformer.train.optim, the schedule from tinyformer.train.schedule,
clipping); what is particular to the lab is the data (an endless task stream), the position ids (random
offsets for learned positions) and the stopping rule: stop once the training-range bin is solved.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tinyformer.config import save_config, to_dict
from tinyformer.errors import TinyformerError
from tinyformer.lab.config import LengenConfig
from tinyformer.tasks import POSITION_KINDS, TaskStream, bin_name, get_task, make_eval_bins, parse_range


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TinyformerError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu")
    return name


class LengenSetup:
    """Everything a run derives from its config: task, bins, eval sets, position kind and table size."""

    def __init__(self, cfg: LengenConfig) -> None:
        self.cfg = cfg
        self.task = get_task(cfg.task)
        self.train_range = parse_range(cfg.train_lengths)
        self.bins = [parse_range(b) for b in cfg.eval_bins]
        self.task.check_range(*self.train_range)
        for lo, hi in self.bins:
            self.task.check_range(lo, hi)
        self.position_kind = "symbol_runs" if cfg.position == "abacus" else "sequence"
        self.position_fn = POSITION_KINDS[self.position_kind]
        self.eval_sets = make_eval_bins(self.task, self.bins, cfg.eval_examples, cfg.eval_seed)
        # the largest position id any evaluated or trained input uses (evaluation starts at 0)
        needed = max(int(self.position_fn(es.examples.tokens[:, :-1], self.task.n_symbols).max()) + 1
                     for es in self.eval_sets)
        self.positions_needed = max(needed, self._train_positions_needed())
        self.table_size = cfg.max_positions or self.positions_needed
        if cfg.position in ("learned", "abacus") and self.table_size < needed:
            longest = max(self.bins, key=lambda b: b[1])
            raise TinyformerError(
                f"bin {bin_name(*longest)} of task {self.task.name} needs {needed} {cfg.position} positions but "
                f"max_positions={self.table_size} can represent only {self.table_size}; raise max_positions "
                f"to at least {needed} or drop that bin"
            )
        self.train_bin = self._train_bin_name()

    def _train_positions_needed(self) -> int:
        rng = np.random.default_rng(0)
        longest = self.task.check_range(*self.train_range)[1]
        ex = self.task.generate(rng, np.array([longest]))
        return int(self.position_fn(ex.tokens[:, :-1], self.task.n_symbols).max()) + 1

    def _train_bin_name(self) -> str:
        """The bin equal to the training range, else the first bin inside it: the one that stops training."""
        lo, hi = self.train_range
        for b in self.bins:
            if b == (lo, hi):
                return bin_name(*b)
        inside = [b for b in self.bins if b[0] >= lo and b[1] <= hi]
        return bin_name(*(inside[0] if inside else self.bins[0]))

    def stream(self) -> TaskStream:
        cfg = self.cfg
        return TaskStream(
            self.task,
            self.train_range,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            random_offset_to=self.table_size if cfg.uses_random_offset else None,
            positions=self.position_kind,
        )

    def eval_positions(self, ids: np.ndarray) -> np.ndarray:
        return self.position_fn(ids, self.task.n_symbols)

    def model_config(self):
        from tinyformer.model import ModelConfig

        cfg = self.cfg
        return ModelConfig.preset(
            cfg.arch,
            vocab_size=self.task.vocab_size,
            n_layers=cfg.layers,
            n_heads=cfg.heads,
            d_model=cfg.d_model,
            d_ff=cfg.d_ff,
            max_seq_len=self.table_size,
            n_positions=self.table_size,
            position=cfg.position,
            rope_theta=cfg.rope_theta,
            rope_scaling=cfg.rope_scaling,
            n_predict=cfg.n_predict,
            dropout=0.0,
        )


def _fmt_bins(acc: dict[str, float]) -> str:
    return "  ".join(f"{k}: {v:.3f}" for k, v in acc.items())


def train_run(cfg: LengenConfig, out_dir: str | Path | None = None, *, force: bool = False,
              log: Callable[[str], None] = print, setup: LengenSetup | None = None) -> dict:
    """Train and evaluate one configuration; write `out_dir` (atomically) when given. Returns the results."""
    import torch

    from tinyformer.fileio import atomic_dir, check_output
    from tinyformer.lab.evaluate import evaluate_bins
    from tinyformer.model import Transformer
    from tinyformer.train.optim import build_optimizer
    from tinyformer.train.schedule import lr_at

    setup = setup or LengenSetup(cfg)
    device = resolve_device(cfg.device)
    if out_dir is not None:
        check_output(out_dir, force)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = Transformer(setup.model_config()).to(device)
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    min_lr = cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr
    stream = setup.stream()

    def evaluate(greedy: bool = False) -> dict:
        return evaluate_bins(model, setup.eval_sets, batch_size=cfg.eval_batch_size, positions=setup.eval_positions,
                             device=device, greedy=greedy, greedy_examples=cfg.greedy_examples)

    def run(write: Callable[[dict], None]) -> dict:
        start = last_log = time.perf_counter()
        examples = 0
        stopped_early, step = False, 0
        for step in range(1, cfg.steps + 1):
            lr = lr_at(step - 1, schedule=cfg.schedule, lr=cfg.lr, min_lr=min_lr, warmup=cfg.warmup, total=cfg.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = {k: v.to(device) for k, v in stream.next_batch().items()}
            _, loss = model(batch["ids"], targets=batch["targets"], position_ids=batch["position_ids"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            examples += cfg.batch_size
            if step % cfg.log_every == 0:
                now = time.perf_counter()
                write({"step": step, "loss": loss.item(), "lr": lr,
                       "examples_per_s": cfg.log_every * cfg.batch_size / max(now - last_log, 1e-9)})
                last_log = now
            if step % cfg.eval_every == 0 or step == cfg.steps:
                acc = evaluate()["accuracy"]
                write({"step": step, "loss": loss.item(), "eval": acc})
                log(f"  step {step:>6}  loss {loss.item():.4f}  {_fmt_bins(acc)}")
                if acc[setup.train_bin] >= cfg.stop_accuracy:
                    stopped_early = step < cfg.steps
                    break
        train_seconds = time.perf_counter() - start
        final = evaluate(greedy=cfg.greedy)
        if cfg.n_predict > 1:  # multi-token prediction: exact match decoding 1 and n_predict tokens per pass
            from tinyformer.lab.multitoken import heads_accuracy

            final["accuracy_heads"] = heads_accuracy(model, setup.eval_sets, positions=setup.eval_positions,
                                                     device=device, batch_size=cfg.eval_batch_size,
                                                     max_examples=cfg.greedy_examples)
        result = {
            "task": cfg.task,
            "pe": cfg.pe,
            "seed": cfg.seed,
            "steps": step,
            "stopped_early": stopped_early,
            "train_bin": setup.train_bin,
            "examples_seen": examples,
            "train_seconds": round(train_seconds, 2),
            "params": model.num_params(),
            **final,
        }
        return result

    if out_dir is None:
        return run(lambda record: None)
    with atomic_dir(out_dir, force=force) as tmp:
        save_config(cfg, tmp / "config.yaml")
        with open(tmp / "metrics.jsonl", "w", encoding="utf-8") as metrics:

            def write(record: dict) -> None:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()

            result = run(write)
        result["config"] = to_dict(cfg)
        (tmp / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        try:
            from tinyformer.model.io import save_model
        except ImportError:  # the model's checkpoint I/O is optional for a lab run
            save_model = None
        if save_model is not None:
            save_model(model, tmp / "model")
    return result
