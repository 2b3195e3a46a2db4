"""A run's report card, RUN/report.md: what ran where, how fast and to what loss, on one page for people.

Written (atomically) beside summary.json whenever a run writes its summary; every number in it is the
summary's (tokens/s and MFU over the run's training time), so the card and summary.json never disagree.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from tinyformer.fileio import atomic_write
from tinyformer.train import rundir
from tinyformer.train.budget import stop_note
from tinyformer.train.runtime import Runtime


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(runtime: Runtime) -> str:
    """CPU model, and the GPU's name when the run trains on one."""
    import torch

    text = cpu_model()
    if runtime.device.type == "cuda":
        text += f"; GPU {torch.cuda.get_device_name(runtime.device)}"
    elif runtime.device.type != "cpu":
        text += f"; {runtime.device.type}"
    return text


def _number(value: Any, spec: str = ",") -> str:
    return "-" if value is None else format(value, spec)


def card(summary: dict[str, Any], runtime: Runtime, config_text: str | None, title: str) -> str:
    """The report card's markdown for `summary` (RUN/summary.json) of a run on `runtime`."""
    import torch

    status = summary.get("status", "?")
    note = stop_note(summary)
    rows = [
        ("status", f"{status} at step {summary.get('step')}" + (f" ({note})" if note else "")),
        ("machine", machine(runtime)),
        ("torch", f"{torch.__version__}, {torch.get_num_threads()} thread(s), {summary.get('world_size', 1)} "
                  f"process{'es' if summary.get('world_size', 1) != 1 else ''}"),
        ("device, precision", f"{summary.get('device')}, {summary.get('precision')} "
                              f"(attention: {summary.get('sdpa_backend')})"),
        ("parameters", _number(summary.get("params"))),
        ("tokens trained", _number(summary.get("tokens"))),
        ("tokens/s", _number(summary.get("tokens_per_s"), ",.0f")),
        ("MFU", "-" if summary.get("mfu") is None else f"{summary['mfu']:.2%} "
                f"(peak {summary.get('peak_flops'):.3g} FLOP/s: {summary.get('peak_flops_source')})"),
    ]
    if "val_loss" in summary:
        rows += [("final val loss", _number(summary.get("val_loss"), ".4f")),
                 ("final val bits per byte", _number(summary.get("val_bpb"), ".4f"))]
    rows += [("training time", f"{_number(summary.get('elapsed_s'), '.2f')} s (steps only, all invocations)"),
             ("wall time", f"{_number(summary.get('wall_s'), '.2f')} s (this invocation)")]
    if "budget_s" in summary:
        rows.append(("budget", f"{summary['budget_s']:g} s of training"))
    if "target_loss" in summary:
        reached = (f"reached at step {summary['target_reached_at_step']} after "
                   f"{summary['time_to_target_s']:.2f} s of training" if summary.get("target_reached")
                   else "not reached")
        rows.append(("target loss", f"{summary['target_loss']:g}: {reached}"))
    lines = [f"# Run report: {title}", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", "## Config", "", "```yaml", (config_text or "(no config.yaml)").rstrip(), "```", ""]
    return "\n".join(lines)


def write_report(run_dir: str | Path, summary: dict[str, Any], runtime: Runtime) -> Path:
    """Write RUN/report.md for `summary` (the run's config read from RUN/config.yaml); returns its path."""
    run_dir = Path(run_dir)
    config = run_dir / rundir.CONFIG_FILE
    text = card(summary, runtime, config.read_text(encoding="utf-8") if config.is_file() else None, str(run_dir))
    path = run_dir / rundir.REPORT_FILE
    with atomic_write(path) as f:
        f.write(text)
    return path
