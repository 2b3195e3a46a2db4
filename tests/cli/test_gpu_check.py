"""bench/gpu_check.py, the one command for a GPU machine: its dry run exercises every step on CPU and writes
the report, and its step runner records a failing or hanging step and still runs the next one."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_gpu_check():
    """bench/gpu_check.py as a module (bench/ is not a package); it imports nothing heavy at the top."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = load_gpu_check()


def dry_run(out: Path, *only: str) -> dict:
    """`bench/gpu_check.py --dry-run` (of the named steps, else all) as a user runs it; checks the report of
    every step it ran and returns {step name: its results}."""
    chosen = ["--only", ",".join(only)] if only else []
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", *chosen, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    report = json.loads((out / "results.json").read_text())
    steps = report["steps"]
    assert [s["name"] for s in steps] == [s.name for s in gpu_check.STEPS if not only or s.name in only]
    failed = {s["name"]: s.get("summary", "") + "\n" + s.get("error_tail", "")[-1500:]
              for s in steps if s["status"] != "ok"}
    assert not failed, failed
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert report["dry_run"] is True
    markdown = (out / "results.md").read_text()
    for i, s in enumerate(steps, 1):
        assert f"| {i} | {s['name']} |" in markdown and (out / "logs" / f"{s['name']}.log").exists()
    return {s["name"]: s["results"] for s in steps}


def test_a_dry_run_of_one_step_reports_it_ok(tmp_path):
    """The command, its report and logs, and the step that measures the matmul ceilings on CPU (the whole dry
    run is the slow test below; the runner's failures and timeouts are the tests after it)."""
    results = dry_run(tmp_path / "out", "env")
    assert set(results["env"]["ceilings"]) == {"bf16", "tf32", "fp32"}


@pytest.mark.slow
def test_dry_run_reports_every_step_ok(tmp_path):
    """Every step at tiny sizes on CPU (~2.5 min): the default run keeps test_a_dry_run_of_one_step_reports_it_ok
    and the runner tests below."""
    results = dry_run(tmp_path / "out")
    # each step measured or checked something real, even at tiny sizes
    assert set(results["env"]["ceilings"]) == {"bf16", "tf32", "fp32"}
    assert results["correctness"]["passed"] > 20 and not results["correctness"]["failed"]
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for name in ("gpt2-compiled", "gpt2-eager", "tinystories")
               for r in results[name]["rows"])
    assert results["lab-shared"]["rows"][0]["processes"] == 2
    assert results["train"]["summary"]["status"] == "finished"
    assert results["torchrun"]["ddp_smoke"]["backend"] == "gloo"


def test_a_failing_and_a_hanging_step_are_recorded_and_the_next_still_runs(tmp_path):
    py = sys.executable
    ok_result = json.dumps({"status": "ok", "summary": "fine", "results": {"x": 1}})
    plan = [
        ("boom", "exits 3", [py, "-c", "import sys; print('something broke'); sys.exit(3)"], 30.0),
        ("hang", "never ends", [py, "-c", "import time; time.sleep(120)"], 2.0),
        ("fine", "writes its result", [py, "-c", f"open({str(tmp_path / 'steps' / 'fine.json')!r}, 'w')"
                                                 f".write({ok_result!r})"], 30.0),
    ]
    start = time.perf_counter()
    records = gpu_check.run_plan(plan, tmp_path, budget_s=120)
    assert time.perf_counter() - start < 30
    boom, hang, fine = records
    assert boom["status"] == "failed" and "something broke" in boom["error_tail"]
    assert hang["status"] == "timed out" and hang["seconds"] < 15
    assert fine["status"] == "ok" and fine["results"] == {"x": 1} and "error_tail" not in fine
    assert (tmp_path / "logs" / "boom.log").read_text().strip() == "something broke"


def test_later_steps_keep_their_share_of_the_budget(tmp_path):
    """A slow early step is cut so that every later step still gets its floor of the overall budget."""
    py = sys.executable
    plan = [("slow", "sleeps", [py, "-c", "import time; time.sleep(120)"], 100.0),
            ("next", "quick", [py, "-c", "pass"], 100.0)]
    records = gpu_check.run_plan(plan, tmp_path, budget_s=gpu_check.FLOOR_S + 6)
    assert records[0]["status"] == "timed out" and records[0]["timeout_s"] <= 6.5
    assert records[1]["status"] == "failed"  # it ran (and wrote no result), rather than being skipped
