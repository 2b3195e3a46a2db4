"""`tinyformer lengen reproduce`: the published length-generalization table (7 task rows x APE/RoPE x 3
seeds) under the reference study's protocol (presets/published.yaml), at CPU scale or at full scale.

Every run is an ordinary engine run under RESULTS/runs/ROW/SCHEME/seed-N, so an interrupted reproduction
continues where it stopped (finished runs are read back, an interrupted one resumes from its checkpoint).
RESULTS/protocol.json fixes what the directory holds; another protocol, scale or override set is refused.
The report sets ours beside the published numbers, per seed and aggregated the way the published figures
are (UF one run, UL/UR the mean of two seeds, the N* rows the mean of three).

Our extra columns (presets/published_extra.yaml: rope-rand, alibi-rand, fire, coupled-relative) run under the
same protocol beside ape/rope; the published file stays untouched, and protocol.json records the extra file's
hash under its own key once an extra column runs, so a directory of ape/rope runs takes extra columns later.
A column whose scheme couples positions is skipped on rows whose task has no coupling rule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyformer.config import read_yaml
from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_write
from tinyformer.lab.executor import one_thread
from tinyformer.lab.report import Entry, render_heatmap
from tinyformer.lab.run import train_task
from tinyformer.lab.sweep import NOT_IN_KEY, lab_config
from tinyformer.model.positions import COUPLED, scheme
from tinyformer.tasks import get_task
from tinyformer.train.config import RunConfig, preset_path
from tinyformer.train.stats import spread

SCALES = ("cpu", "full")
SCHEMES = ("ape", "rope")  # the published study's columns (presets/published.yaml)
EXTRA_PRESET = "published_extra"  # our columns beside them (presets/published_extra.yaml)
EXTRA_KEY = "extra_preset_sha256"  # protocol.json's stamp of that file, present once an extra column ran


@dataclass
class Job:
    row: str  # the published row (UF, UL, ..., NRLast)
    scheme: str  # ape | rope
    seed: int
    cfg: RunConfig


@dataclass(frozen=True)
class Skip:
    row: str
    scheme: str
    reason: str  # why the row cannot run under this column (its task has no position coupling rule)


def load_protocol(scale: str) -> dict[str, Any]:
    if scale not in SCALES:
        raise TinyformerError(f"unknown scale {scale!r}; use one of: {', '.join(SCALES)}")
    return read_yaml(preset_path("published"))


def load_extra() -> dict[str, Any]:
    """Our extra columns: {"schemes": {name: {"like": published scheme, "drop": [keys], "changes": {...}}}}."""
    return read_yaml(preset_path(EXTRA_PRESET))


def scheme_names() -> list[str]:
    """Every name `--schemes` takes: the published ape, rope, then our extra columns."""
    return [*SCHEMES, *load_extra()["schemes"]]


def _sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def run_settings(protocol: Mapping[str, Any], scale: str, row: str, scheme: str, seed: int,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dotted settings of one run: common, scheme, row, scale, then the user's overrides. An extra column
    takes the settings of the published scheme it is `like` (with its row and scale changes), drops its
    `drop` keys and adds its `changes`."""
    extra = {} if scheme in protocol["schemes"] else load_extra()["schemes"]
    if scheme not in protocol["schemes"] and scheme not in extra:
        raise TinyformerError(f"the published protocol defines no scheme {scheme!r}; it has: "
                              f"{', '.join(protocol['schemes'])}; our extra columns (presets/{EXTRA_PRESET}.yaml): "
                              f"{', '.join(extra)}")
    if row not in protocol["rows"]:
        raise TinyformerError(f"the published table has no row {row!r}; rows: {', '.join(protocol['rows'])}")
    column = extra.get(scheme) or {}
    base = column.get("like", scheme)
    spec = protocol["rows"][row]
    scaled = protocol["scales"][scale] or {}
    tables = {**protocol["position_table"], **(scaled.get("position_table") or {})}
    settings = {**protocol["common"], **protocol["schemes"][base], **(spec.get(base) or {}),
                **(scaled.get("changes") or {}), **(scaled.get(base) or {})}
    for key in column.get("drop") or ():
        settings.pop(key, None)
    settings.update(column.get("changes") or {})
    settings["task.name"] = spec["task"]
    settings["train.seed"] = seed
    if base == "ape":
        settings["model.n_positions"] = tables[spec["kind"]]
    return {**settings, **(overrides or {})}


def _skip_reason(settings: Mapping[str, Any]) -> str | None:
    """Why this run cannot train: its scheme couples positions and its task has no coupling rule."""
    if scheme(str(settings["model.position"])).ids != COUPLED:
        return None
    return get_task(settings["task.name"]).coupling_refusal()


def columns(scale: str, results: str | Path, *, rows: list[str] | None = None, schemes: list[str] | None = None,
            seeds: list[int] | None = None, overrides: Mapping[str, Any] | None = None, build: bool = True
            ) -> tuple[list[Job], list[Skip]]:
    """Every run of the reproduction (a lab RunConfig with its directory under RESULTS/runs; with
    build=False, no jobs), and the (row, column) pairs that cannot run, skipped."""
    protocol = load_protocol(scale)
    rows = rows or list(protocol["rows"])
    schemes = schemes or list(SCHEMES)
    seeds = seeds if seeds is not None else list(protocol["seeds"])
    jobs, skips = [], []
    for row in rows:
        for name in schemes:
            for seed in seeds:
                settings = run_settings(protocol, scale, row, name, seed, overrides)
                reason = _skip_reason(settings)
                if reason:
                    if Skip(row, name, reason) not in skips:
                        skips.append(Skip(row, name, reason))
                    continue
                if not build:
                    continue
                settings["run_dir"] = str(Path(results) / "runs" / row / name / f"seed-{seed}")
                jobs.append(Job(row, name, seed, lab_config(settings)))
    return jobs, skips


def plan(scale: str, results: str | Path, **kw) -> list[Job]:
    """Every run of the reproduction (`columns` without the skipped pairs)."""
    return columns(scale, results, **kw)[0]


def skipped(scale: str, **kw) -> list[Skip]:
    """The (row, column) pairs of the reproduction that are skipped (shown n/a in the report)."""
    return columns(scale, "unused", build=False, **kw)[1]


def check_results_dir(results: Path, scale: str, overrides: Mapping[str, Any] | None,
                      schemes: list[str] | None = None) -> None:
    """RESULTS/protocol.json: written on the first call, and must match on every later one (overrides that
    only change how runs are carried out, such as train.threads or train.stop_at_step, may differ). Once an
    extra column runs, the hash of presets/published_extra.yaml is added under its own key: a directory of
    ape/rope runs takes extra columns later, and extra columns made with another version of the file are
    refused (ape/rope runs never look at that key)."""
    protocol = load_protocol(scale)
    kept = {k: v for k, v in (overrides or {}).items() if k not in NOT_IN_KEY}
    stamp = {"protocol": "published", "scale": scale, "overrides": kept, "preset_sha256": _sha256(protocol)}
    extra = _sha256(load_extra()) if any(s not in SCHEMES for s in schemes or ()) else None
    path = results / "protocol.json"
    if not path.exists():
        results.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            json.dump({**stamp, EXTRA_KEY: extra} if extra else stamp, f, indent=1)
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise TinyformerError(f"{path} is not valid JSON; the results directory is damaged") from None
    published = {k: v for k, v in old.items() if k != EXTRA_KEY}
    if published != stamp:
        diff = [k for k in stamp if published.get(k) != stamp[k]]
        raise TinyformerError(
            f"{results} holds a reproduction made with another {', '.join(diff)} "
            f"({', '.join(f'{k}: {published.get(k)!r}' for k in diff if k != 'preset_sha256')}); "
            "use another --results directory or the same settings"
        )
    if extra is None or old.get(EXTRA_KEY) == extra:
        return
    if old.get(EXTRA_KEY) is not None:
        raise TinyformerError(
            f"{results} holds extra columns made with another presets/{EXTRA_PRESET}.yaml (its hash changed); "
            "use another --results directory or restore that file")
    with atomic_write(path) as f:  # the first extra column in a directory of ape/rope runs
        json.dump({**old, EXTRA_KEY: extra}, f, indent=1)


def reproduce(scale: str, results: str | Path, executor, *, rows=None, schemes=None, seeds=None,
              overrides: Mapping[str, Any] | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Run (or resume, or read back) every run of the table; returns one record per run."""
    results = Path(results)
    jobs, skips = columns(scale, results, rows=rows, schemes=schemes, seeds=seeds, overrides=overrides)
    check_results_dir(results, scale, overrides, schemes)
    records = []
    log(f"reproduce ({scale} scale): {len(jobs)} runs -> {results}")
    for s in skips:
        log(f"skipped: {s.row} / {s.scheme} ({s.reason})")
    quiet = [dataclasses.replace(c, train=dataclasses.replace(c.train, progress=False), model_keys=c.model_keys)
             for c in (one_thread(j.cfg) for j in jobs)]  # one line per finished run, not N progress bars
    for n, (i, summary) in enumerate(executor.map(train_task, quiet), 1):
        job = jobs[i]
        acc = "  ".join(f"{b}: {v:.3f}" for b, v in summary["accuracy"].items())
        log(f"[{n}/{len(jobs)}] {job.row} / {job.scheme} / seed {job.seed}: {summary['status']} at step "
            f"{summary['step']}  {acc}")
        records.append({"row": job.row, "scheme": job.scheme, "seed": job.seed, "steps": summary["step"],
                        "status": summary["status"], "accuracy": summary["accuracy"],
                        "elapsed_s": summary.get("elapsed_s")})
    order = {(j.row, j.scheme, j.seed): k for k, j in enumerate(jobs)}
    records.sort(key=lambda r: order[(r["row"], r["scheme"], r["seed"])])
    return records


def aggregate(records: list[dict], scale: str, skips: list[Skip] = ()) -> list[dict]:
    """Per (row, scheme): the mean over the seeds the published figure averages (its first k seeds), the
    mean over every seed run, and each seed's values; a skipped (row, column) pair is {row, scheme, skipped}
    after its row's runs."""
    protocol = load_protocol(scale)
    out = []
    for row in dict.fromkeys([*(r["row"] for r in records), *(s.row for s in skips)]):
        for col in dict.fromkeys(r["scheme"] for r in records if r["row"] == row):
            runs = sorted((r for r in records if r["row"] == row and r["scheme"] == col), key=lambda r: r["seed"])
            k = int(protocol["rows"][row]["published_seeds"])
            bins = list(runs[0]["accuracy"])
            as_published = runs[:k]
            published = {b: spread([r["accuracy"][b] for r in as_published]) for b in bins}
            every_seed = {b: spread([r["accuracy"][b] for r in runs]) for b in bins}
            out.append({
                "row": row, "scheme": col, "bins": bins, "published_seeds": k,
                "mean_as_published": {b: published[b]["mean"] for b in bins},
                "n_as_published": len(as_published),
                "mean_all": {b: every_seed[b]["mean"] for b in bins},
                "std_all": {b: every_seed[b]["std"] for b in bins},
                "per_seed": {r["seed"]: r["accuracy"] for r in runs},
                "steps": {r["seed"]: r["steps"] for r in runs},
            })
        out += [{"row": row, "scheme": s.scheme, "skipped": s.reason} for s in skips if s.row == row]
    return out


def published_bins(bins: list[str]) -> dict[str, str]:
    """Our bin -> the published bin it stands for: the 2nd and 3rd bins are the published 51-100 and 101-150
    (at CPU scale the lengths are scaled down, the bins keep their role)."""
    return {ours: theirs for ours, theirs in zip(bins[1:], ("51-100", "101-150"))}


def _published(published: dict, a: dict) -> dict:
    """The published figures of a row's column: only ape and rope have any (our extra columns none)."""
    return published.get(a["row"], {}).get(a["scheme"], {}) if a["scheme"] in SCHEMES else {}


def extra_note(aggregated: list[dict]) -> str:
    """What the report says about our extra columns (nothing for a table of ape/rope only)."""
    extra = list(dict.fromkeys(a["scheme"] for a in aggregated if a["scheme"] not in SCHEMES))
    if not extra:
        return ""
    note = (f" {'Column' if len(extra) == 1 else 'Columns'} {', '.join(extra)} {'is' if len(extra) == 1 else 'are'} ours (presets/{EXTRA_PRESET}.yaml), not the published study's: "
            "same protocol, no published figure.")
    for col in dict.fromkeys(a["scheme"] for a in aggregated if "skipped" in a):
        rows = [a["row"] for a in aggregated if a["scheme"] == col and "skipped" in a]
        note += (f" {col}: n/a (skipped, not run) on {', '.join(rows)}, whose "
                 f"{'task has' if len(rows) == 1 else 'tasks have'} no position coupling rule.")
    return note


def render(aggregated: list[dict], scale: str, published: dict) -> tuple[str, str]:
    """(markdown, csv) of the reproduction: ours as published is aggregated, per seed, published."""
    lines = [f"# Published length-generalization table: reproduction at {scale} scale", ""]
    note = ("Ours: exact-match accuracy (teacher forcing). 'as published' = the mean over the seeds the "
            "published figure averages (UF one run, UL/UR two seeds, N* rows three); 'all seeds' = mean ± sample "
            "standard deviation over every seed run; then each seed.")
    if scale == "cpu":
        note += (" CPU scale: lengths 5x shorter, so our bins 11-20 and 21-30 play the role of the published "
                 "51-100 and 101-150; the published numbers are for the full protocol.")
    note += extra_note(aggregated)
    lines += [note, ""]
    header = ["row", "scheme", "bin", "as published", "all seeds", "per seed", "published"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv_rows = [",".join(["row", "scheme", "bin", "published_bin", "mean_as_published", "n_as_published",
                          "mean_all", "std_all", *[f"seed_{s}" for s in range(3)], "published"])]
    for a in aggregated:
        if "skipped" in a:
            lines.append(f"| {a['row']} | {a['scheme']} | - | n/a | n/a | n/a | - |")
            csv_rows.append(",".join([a["row"], a["scheme"], "", "", "n/a", "", "n/a", "", "", "", "", ""]))
            continue
        mapping = published_bins(a["bins"])
        pub = _published(published, a)
        for b in a["bins"][1:]:
            theirs = mapping.get(b)
            p = pub.get(theirs)
            seeds = " / ".join(f"{acc[b]:.3f}" for acc in a["per_seed"].values())
            lines.append(f"| {a['row']} | {a['scheme']} | {b}" + (f" (~{theirs})" if theirs != b else "")
                         + f" | {a['mean_as_published'][b]:.3f} (n={a['n_as_published']}) | "
                         f"{a['mean_all'][b]:.3f} ± {a['std_all'][b]:.3f} | {seeds} | "
                         + (f"{p:.3f}" if p is not None else "-") + " |")
            per = [f"{a['per_seed'][s][b]:.4f}" if s in a["per_seed"] else "" for s in range(3)]
            csv_rows.append(",".join([a["row"], a["scheme"], b, theirs or "", f"{a['mean_as_published'][b]:.4f}",
                                      str(a["n_as_published"]), f"{a['mean_all'][b]:.4f}",
                                      f"{a['std_all'][b]:.4f}", *per, f"{p:.4f}" if p is not None else ""]))
    return "\n".join(lines) + "\n", "\n".join(csv_rows) + "\n"


def write(results: Path, aggregated: list[dict], scale: str, published: dict) -> dict[str, Path]:
    """report.md, report.csv and heatmap.png (ours as published, [published] beneath) under RESULTS."""
    md, csv = render(aggregated, scale, published)
    paths = {"markdown": results / "report.md", "csv": results / "report.csv", "heatmap": results / "heatmap.png"}
    with atomic_write(paths["markdown"]) as f:
        f.write(md)
    with atomic_write(paths["csv"]) as f:
        f.write(csv)
    aggregated = [a for a in aggregated if "skipped" not in a]
    entries = [Entry(a["row"], a["scheme"], {b: a["mean_as_published"][b] for b in a["bins"]}) for a in aggregated]
    remapped = {}
    for a in aggregated:
        mapping = published_bins(a["bins"])
        pub = _published(published, a)
        remapped.setdefault(a["row"], {})[a["scheme"]] = {ours: pub[t] for ours, t in mapping.items() if t in pub}
    render_heatmap(entries, remapped, paths["heatmap"],
                   f"reproduction ({scale} scale): ours as published  [published, where there is one]")
    return paths
