"""A run scored by EleutherAI's lm-evaluation-harness: exported to a temporary HF folder (the same files
`tinyformer export` writes), loaded by the harness's own `hf` model class, evaluated with
`lm_eval.simple_evaluate`, and the results written as RUN/harness/<tasks>.json.

The harness sees exactly what `lm_eval --model hf --model_args pretrained=DIR` sees on an export: our BPE as
`tokenizer.json` with no post-processor, so no BOS is added; a context and its continuation are encoded
together and split after the context's own tokens (trailing spaces of the context move to the continuation).
"""

from __future__ import annotations

import difflib
import json
import tempfile
from pathlib import Path
from typing import Any

from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_write
from tinyformer.lm.publish import check_text_run, export_run

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def parse_tasks(text: str) -> list[str]:
    """`--harness a,b` -> ["a", "b"] (no empty or repeated names)."""
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise TinyformerError("--harness needs at least one task name (comma-separated, e.g. hellaswag,arc_easy)")
    return list(dict.fromkeys(tasks))


def parse_limit(text: str | None) -> int | float | None:
    """`--limit N` examples per task, or a fraction below 1 (the harness's own meaning)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise TinyformerError(f"--limit must be a number of examples (or a fraction below 1), got {text!r}") from None
    if value <= 0:
        raise TinyformerError(f"--limit must be positive, got {text}")
    return value if value < 1 else int(value)


def check_evaluable(run, model) -> None:
    """Refuse, in one line, a run the harness cannot read: a task run, no HF twin, no tokenizer, no
    <|endoftext|>."""
    check_text_run(run, model, "the harness")
    if run.tokenizer().eot_id is None:  # the export's bos/eos: the harness's prefix token (its tokenizer reads it)
        raise TinyformerError(
            f"{run.name}'s tokenizer has no <|endoftext|> token, which the harness needs as its prefix token (a "
            "character-level run has none); train on data from `tinyformer data prepare text` (a BPE with it)")


def _lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise TinyformerError("harness evaluation needs lm-eval: pip install 'tinyformer[harness]'") from None
    return lm_eval


def task_manager(include: str | None):
    """The harness's TaskManager over its own tasks, plus the YAML tasks in `include`."""
    _lm_eval()
    from lm_eval.tasks import TaskManager

    if include is not None and not Path(include).is_dir():
        raise TinyformerError(f"--harness-include {include} is not a directory of task YAML files")
    return TaskManager(include_path=include)


def check_tasks(tasks: list[str], manager) -> None:
    known = set(manager.all_tasks)
    for name in tasks:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `lm_eval ls tasks` lists them"
            raise TinyformerError(f"unknown harness task {name!r}{hint} (local YAML tasks: --harness-include DIR)")


def evaluate(run, model, tasks: list[str], *, include: str | None = None, limit: int | float | None = None,
             device: str = "cpu", batch_size: int = 1, precision: str = "fp32", num_fewshot: int | None = None,
             log_samples: bool = False) -> dict[str, Any]:
    """The harness's results for `tasks` on `run` (its `model` loaded): a JSON-ready dict with
    `results`, `configs`, `versions`, `n-shot`, `n-samples` (and `samples` with log_samples)."""
    check_evaluable(run, model)
    manager = task_manager(include)
    check_tasks(tasks, manager)
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import handle_non_serializable

    with tempfile.TemporaryDirectory(prefix="tinyformer-harness-") as tmp:
        folder = export_run(run, model.float().cpu(), Path(tmp) / "hf")
        lm = HFLM(pretrained=str(folder), device=device, batch_size=batch_size, dtype=DTYPES[precision])
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                      num_fewshot=num_fewshot, log_samples=log_samples)
    keep = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
            "n-samples", "samples")
    result = {k: out[k] for k in keep if k in out}
    result["tinyformer"] = {"checkpoint": str(run.checkpoint), "tasks": tasks, "limit": limit,
                            "precision": precision, "batch_size": batch_size}
    return json.loads(json.dumps(result, default=handle_non_serializable))


def results_path(run, tasks: list[str]) -> Path:
    """RUN/harness/<task+task>.json (beside a bare checkpoint's files when there is no run)."""
    return Path(run.path or run.checkpoint) / "harness" / ("+".join(tasks) + ".json")


def write_results(path: Path, result: dict[str, Any]) -> None:
    with atomic_write(path) as f:
        json.dump(result, f, indent=2)
        f.write("\n")


def table(result: dict[str, Any]) -> str:
    """One row per task and metric: task, metric, value, standard error."""
    rows = [("task", "metric", "value", "stderr")]
    for task, metrics in result["results"].items():
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if key in ("alias", "sample_len") or name.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            err = metrics.get(f"{name}_stderr,{filt}")
            rows.append((task, name if filt in ("", "none") else f"{name} ({filt})", f"{value:.4f}",
                         f"{err:.4f}" if isinstance(err, (int, float)) else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
