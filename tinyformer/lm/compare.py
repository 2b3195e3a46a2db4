"""Comparing variants of one language-model config (position schemes, learning rates, ...) over seeds: the
runs, trained one after another through the one engine (finished runs are read back, interrupted ones
resume), then the numbers every comparison needs, from the same code as `tinyformer eval`.

OUT/runs/VARIANT/seed-N/ are ordinary run directories; OUT/results.{md,csv,json} and the three figures
(`tinyformer.lm.compare_plots`) are written once every run has finished.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyformer.config import read_yaml
from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_write
from tinyformer.lm import compare_plots
from tinyformer.lm.abacus import coupled_refusal
from tinyformer.lm.contexts import evaluate_run
from tinyformer.lm.run import train_lm
from tinyformer.train import rundir
from tinyformer.train.config import RunConfig, load_run_config, saved_dict
from tinyformer.train.stats import spread
from tinyformer.train.status import DONE, INTERRUPTED, PAUSED

FACTORS = (1, 2, 4, 8)  # evaluation contexts, as multiples of the training context


@dataclass
class Variant:
    """One point of the grid: a label for people and the dotted overrides that make it."""

    label: str
    settings: list[str]


@dataclass
class Member:
    """One run of the comparison: a variant trained with one seed."""

    variant: Variant
    seed: int
    cfg: RunConfig
    summary: dict[str, Any] = field(default_factory=dict)
    contexts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)


def parse_vary(items: Sequence[str]) -> list[Variant]:
    """`["model.position=rope,alibi", "train.lr=1e-3,3e-4"]` -> every combination, in the order given."""
    if not items:
        raise TinyformerError("give at least one --vary KEY=V1,V2 (e.g. --vary model.position=sinusoidal,rope,alibi)")
    axes = []
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip()
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not eq or not key or not options:
            raise TinyformerError(f"--vary {item!r} is not KEY=V1,V2,... (e.g. model.position=rope,alibi)")
        if key in ("run_dir", "train.seed"):
            raise TinyformerError(f"--vary {key}: compare sets it itself (use --out and --seeds)")
        if len(set(options)) != len(options):
            raise TinyformerError(f"--vary {item!r} names a value twice")
        axes.append([(key, v) for v in options])
    many = len(axes) > 1
    variants = []
    for combo in itertools.product(*axes):
        label = " ".join(f"{k.split('.')[-1]}={v}" for k, v in combo) if many else combo[0][1]
        variants.append(Variant(label, [f"{k}={v}" for k, v in combo]))
    return variants


def dir_name(label: str) -> str:
    """A variant's directory name: its label with anything but letters, digits, '.', '-' and '=' as '_'."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", label).strip("_") or "variant"


def plan(config: str | None, overrides: Sequence[str], vary: Sequence[str], seeds: int, out: Path) -> list[Member]:
    """Every run of the comparison with its resolved config; every config is checked before anything trains."""
    if seeds < 1:
        raise TinyformerError(f"--seeds must be at least 1, got {seeds}")
    if any(o.split("=", 1)[0].strip() in ("run_dir", "train.seed") for o in overrides):
        raise TinyformerError("compare sets run_dir and train.seed itself: use --out DIR and --seeds N instead")
    base = load_run_config(config, overrides)
    if base.kind != "lm":
        raise TinyformerError("compare trains language models on token files (a data section); for synthetic "
                              "tasks use `tinyformer lengen sweep`")
    if not base.data.val:
        raise TinyformerError("compare needs a validation file to compare on: set data.val=FILE.bin")
    members = []
    for variant in parse_vary(vary):
        for s in range(seeds):
            seed = base.train.seed + s
            run_dir = out / "runs" / dir_name(variant.label) / f"seed-{seed}"
            cfg = load_run_config(config, [*overrides, *variant.settings, f"train.seed={seed}", f"run_dir={run_dir}"])
            refusal = coupled_refusal(cfg.model)
            if refusal:
                raise TinyformerError(f"variant {variant.label}: {refusal}")
            members.append(Member(variant, seed, cfg))
    return members


def finished(member: Member) -> bool:
    """The run ended earlier with this very config: nothing to train, read it back."""
    run_dir = member.run_dir
    summary = rundir.read_summary(run_dir) if run_dir.is_dir() else {}
    if summary.get("status") not in DONE or not (run_dir / rundir.CONFIG_FILE).is_file():
        return False
    saved = read_yaml(run_dir / rundir.CONFIG_FILE)
    want = saved_dict(member.cfg)
    return _without_model(saved) == _without_model(want) and _model_matches(saved.get("model", {}), want["model"])


def _without_model(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "model"}


def _model_matches(saved: dict[str, Any], want: dict[str, Any]) -> bool:
    # the saved model section is resolved (vocab size from the tokenizer): compare the keys the config set
    return all(saved.get(k) == v for k, v in want.items() if k != "vocab_size")


def train_all(members: list[Member], log=print) -> str:
    """Train (or read back) every run in order: 'done', 'paused' (train.stop_at_step) or the status of an
    interrupted run, where it stops."""
    paused = 0
    for i, m in enumerate(members, 1):
        where = f"[{i}/{len(members)}] {m.variant.label}, seed {m.seed}"
        if finished(m):
            m.summary = rundir.read_summary(m.run_dir)
            log(f"{where}: finished earlier, read back from {m.run_dir}")
            continue
        log(f"{where}: training -> {m.run_dir}")
        m.summary = train_lm(m.cfg)
        status = m.summary.get("status")
        if status == INTERRUPTED:
            return status
        paused += status == PAUSED
    return PAUSED if paused else "done"


def evaluate_all(members: list[Member], factors: Sequence[int], device) -> int:
    """Each run's best checkpoint (else latest) at every context factor, as `tinyformer eval --seq-len`;
    the factors multiply the first variant's training context, so every variant is measured at the same
    lengths. Returns that context."""
    first = members[0].cfg
    trained = int(first.train.seq_len or first.model.max_seq_len)
    for m in members:
        run = rundir.Run(m.run_dir)
        model = run.load_model(device)
        m.contexts, _ = evaluate_run(run, model, [f * trained for f in factors], device)
        m.summary["checkpoint"] = str(run.checkpoint)
    return trained


def spread_of(values: Sequence[float | None]) -> dict[str, float | None]:
    """`spread` of the values that are not None, and how many there are (n)."""
    return {**spread(values), "n": sum(v is not None for v in values)}


def aggregate(members: list[Member]) -> list[dict[str, Any]]:
    """Per variant: its runs' numbers and their spread at each evaluated context length."""
    out = []
    for label in dict.fromkeys(m.variant.label for m in members):
        group = [m for m in members if m.variant.label == label]
        lengths = [r["seq_len"] for r in group[0].contexts]
        by_length = []
        for j, seq_len in enumerate(lengths):
            rows = [m.contexts[j] for m in group]
            stopped = next((r["stopped"] for r in rows if r.get("stopped")), None)
            by_length.append({"seq_len": seq_len, "loss": spread_of([r["loss"] for r in rows]),
                              "perplexity": spread_of([r["perplexity"] for r in rows]), "stopped": stopped,
                              "per_seed": {k: [r[k] for r in rows] for k in ("loss", "perplexity")}})
        out.append({"variant": label, "settings": group[0].variant.settings, "seeds": [m.seed for m in group],
                    "run_dirs": [str(m.run_dir) for m in group], "by_seq_len": by_length, **limits_of(group)})
    return out


def limits_of(group: list[Member]) -> dict[str, Any]:
    """A variant's train.budget and train.target_loss and what they gave: training seconds, and the training
    seconds to the target of the seeds that reached it (None where the config set neither)."""
    summaries = [m.summary for m in group]
    return {"budget_s": group[0].cfg.train.budget_s, "target_loss": group[0].cfg.train.target_loss,
            "train_s": spread_of([s.get("elapsed_s") for s in summaries]),
            "time_to_target_s": spread_of([s.get("time_to_target_s") for s in summaries])}


def _limit_cells(v: dict[str, Any], budget: bool, target: bool) -> list[str]:
    cells = []
    if budget:
        spent = v["train_s"]["mean"]
        cells.append(("-" if spent is None else f"{spent:.2f}") + (f" of {v['budget_s']:g}" if v["budget_s"] else ""))
    if target:
        reached, n = v["time_to_target_s"], len(v["seeds"])
        cells.append("-" if v["target_loss"] is None else "not reached" if not reached["n"] else
                     f"{reached['mean']:.2f}" + (f" ({reached['n']}/{n} seeds)" if reached["n"] < n else ""))
    return cells


def results_table(variants: list[dict[str, Any]], trained: int) -> str:
    """The markdown table: validation loss and perplexity at the training context, perplexity beyond it."""
    lengths = [b["seq_len"] for b in variants[0]["by_seq_len"]]
    budget = any(v.get("budget_s") for v in variants)
    target = any(v.get("target_loss") is not None for v in variants)
    head = ["variant", "seeds", f"val loss at {trained} (mean ± std)"] + [
        f"ppl at {n} ({n // trained}x)" for n in lengths]
    head += ["training s (budget)"] * budget + ["training s to target loss"] * target
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for v in variants:
        first = v["by_seq_len"][0]["loss"]
        cells = [v["variant"], str(len(v["seeds"])),
                 f"{first['mean']:.4f} ± {first['std']:.4f}" if first["mean"] is not None else "-"]
        for b in v["by_seq_len"]:
            p = b["perplexity"]
            if p["mean"] is None:
                cells.append("not evaluated*")
                notes.append(f"{v['variant']}: {b['stopped']}")
            else:
                cells.append(f"{p['mean']:.3f}" + (f" ({p['min']:.3f}-{p['max']:.3f})" if p["n"] > 1 else ""))
        cells += _limit_cells(v, budget, target)
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "\\* " + "; ".join(dict.fromkeys(notes))]
    return "\n".join(lines) + "\n"


def write_results(members: list[Member], out: Path, trained: int) -> dict[str, Path]:
    """OUT/results.md (+ .csv one row per run and length, + .json everything) and the three figures."""
    variants = aggregate(members)
    table = results_table(variants, trained)
    paths = {"table": out / "results.md", "csv": out / "results.csv", "json": out / "results.json"}
    with atomic_write(paths["table"]) as f:
        f.write(f"# Comparison: {', '.join(v['variant'] for v in variants)}\n\nTraining context {trained} tokens; "
                "each run evaluated at its best checkpoint (as `tinyformer eval --seq-len`), on its validation "
                "file with training's evaluation subset. Perplexity: mean over seeds (min-max).\n\n" + table)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["variant", "seed", "run_dir", "seq_len", "loss", "perplexity", "tokens", "stopped"])
    for m in members:
        for r in m.contexts:
            writer.writerow([m.variant.label, m.seed, m.run_dir, r["seq_len"], r["loss"], r["perplexity"],
                             r["tokens"], r.get("stopped", "")])
    with atomic_write(paths["csv"]) as f:
        f.write(buf.getvalue())
    runs = [{"variant": m.variant.label, "seed": m.seed, "run_dir": str(m.run_dir), "status": m.summary.get("status"),
             "final_val_loss": m.summary.get("val_loss"), "checkpoint": m.summary.get("checkpoint"),
             "train_s": m.summary.get("elapsed_s"), "time_to_target_s": m.summary.get("time_to_target_s"),
             "by_seq_len": m.contexts} for m in members]
    with atomic_write(paths["json"]) as f:
        json.dump({"trained_seq_len": trained, "variants": variants, "runs": runs}, f, indent=1)
    paths.update(compare_plots.draw_all(members, variants, trained, out))
    return paths
