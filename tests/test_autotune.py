"""precision=auto on a CPU: chosen by measurement (a fake timer here), never a candidate measured slower than
float32, cached per shape, and applied to a real run."""

from __future__ import annotations

import json

import pytest
import torch

from tinyformer.train import autotune


def fake_measure(times: dict, calls: list | None = None):
    def measure(candidate):
        if calls is not None:
            calls.append(candidate)
        return times[candidate]

    return measure


def test_the_fastest_candidate_wins_and_a_slower_one_never_does():
    cands = autotune.CPU_CANDIDATES
    times = {("fp32", "auto"): 1.0, ("fp32", "math"): 1.2, ("bf16", "auto"): 1.4, ("bf16", "math"): 0.6,
             ("bf16", "fp32"): 0.7}
    assert autotune.pick_fastest(cands, fake_measure(times))[0] == ("bf16", "math")
    # bf16 measured slower than float32 everywhere: float32 stays
    times = {("fp32", "auto"): 1.0, ("fp32", "math"): 1.1, ("bf16", "auto"): 1.3, ("bf16", "math"): 1.05,
             ("bf16", "fp32"): 1.2}
    assert autotune.pick_fastest(cands, fake_measure(times))[0] == ("fp32", "auto")
    # a win inside the noise margin is not a win
    times = {("fp32", "auto"): 1.0, ("fp32", "math"): 0.99, ("bf16", "auto"): 0.985, ("bf16", "math"): 1.5,
             ("bf16", "fp32"): 0.98}
    assert autotune.pick_fastest(cands, fake_measure(times))[0] == ("fp32", "auto")


def test_each_candidate_is_timed_in_interleaved_rounds_and_the_minimum_kept():
    calls: list = []
    seq = iter([3.0, 2.0, 5.0, 1.0])  # fp32 then bf16, twice

    def measure(c):
        calls.append(c)
        return next(seq)

    best, times = autotune.pick_fastest([("fp32", "auto"), ("bf16", "auto")], measure, rounds=2)
    assert calls == [("fp32", "auto"), ("bf16", "auto")] * 2
    assert times == {"fp32/auto": 3.0, "bf16/auto": 1.0} and best == ("bf16", "auto")


def test_choose_measures_once_per_shape_then_reads_the_cache(tmp_path, monkeypatch):
    from tinyformer.model import ModelConfig, Transformer

    monkeypatch.setenv("TINYFORMER_CACHE", str(tmp_path))
    calls: list = []
    times = {("fp32", "auto"): 1.0, ("fp32", "math"): 2.0, ("bf16", "auto"): 3.0, ("bf16", "math"): 0.5,
             ("bf16", "fp32"): 0.8}
    monkeypatch.setattr(autotune, "step_timer", lambda *a, **k: fake_measure(times, calls))
    model = Transformer(ModelConfig(vocab_size=11, n_layers=1, n_heads=2, d_model=16))
    batch = {"ids": torch.zeros(2, 5, dtype=torch.long), "targets": torch.zeros(2, 5, dtype=torch.long)}
    first = autotune.choose(model, {"d": 16}, batch, "auto", "auto", torch.device("cpu"))
    assert first[:2] == ("bf16", "math") and first[2]["source"] == "measured" and len(calls) == 15
    again = autotune.choose(model, {"d": 16}, batch, "auto", "auto", torch.device("cpu"))
    assert again[:2] == ("bf16", "math") and again[2]["source"].startswith("cached") and len(calls) == 15
    other = {"ids": torch.zeros(2, 7, dtype=torch.long), "targets": torch.zeros(2, 7, dtype=torch.long)}
    autotune.choose(model, {"d": 16}, other, "auto", "auto", torch.device("cpu"))
    assert len(calls) == 30, "another shape is measured anew"
    assert len(json.loads((tmp_path / "autotune.json").read_text())) == 2
    # an explicit attention kernel leaves only the precision to choose
    monkeypatch.setattr(autotune, "step_timer", lambda *a, **k: fake_measure(times))
    assert autotune.choose(model, {"d": 17}, batch, "auto", "math", torch.device("cpu"))[:2] == ("bf16", "math")
    assert autotune.choose(model, {"d": 17}, batch, "fp32", "math", torch.device("cpu"))[2] == {"source": "given"}


def test_a_run_with_precision_auto_records_what_was_measured(tmp_path, monkeypatch):
    from tinyformer.lab.run import train_task
    from tinyformer.lab.sweep import lab_config

    monkeypatch.setenv("TINYFORMER_CACHE", str(tmp_path / "cache"))
    summary = train_task(lab_config({"task.name": "majority", "model.n_layers": 1, "model.d_model": 16,
                                     "model.n_heads": 2, "train.max_steps": 2, "eval.examples": 8,
                                     "task.train_lengths": "1-4", "eval.bins": ["1-4"], "train.progress": False,
                                     "train.precision": "auto", "run_dir": str(tmp_path / "run")}))
    tuned = summary["autotune"]
    assert tuned["source"] == "measured" and set(tuned["seconds_per_step"]) == {"fp32/auto", "fp32/math",
                                                                               "bf16/auto", "bf16/math", "bf16/fp32"}
    assert (summary["precision"], summary["sdpa_backend"]) == (tuned["precision"], tuned["sdpa_backend"])
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())  # what the run directory keeps
    assert (on_disk["precision"], on_disk["sdpa_backend"]) == (tuned["precision"], tuned["sdpa_backend"])
    fastest = min(tuned["seconds_per_step"].values())
    chosen = tuned["seconds_per_step"][f"{tuned['precision']}/{tuned['sdpa_backend']}"]
    assert chosen == fastest or tuned["precision"] == "fp32"
    assert chosen <= tuned["seconds_per_step"]["fp32/auto"], "auto is never slower than float32 as measured"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_explicit_precision_is_never_measured(tmp_path, monkeypatch, precision):
    from tinyformer.lab.run import train_task
    from tinyformer.lab.sweep import lab_config

    monkeypatch.setattr(autotune, "step_timer", lambda *a, **k: pytest.fail("measured an explicit precision"))
    summary = train_task(lab_config({"task.name": "majority", "model.n_layers": 1, "model.d_model": 16,
                                     "model.n_heads": 2, "train.max_steps": 1, "eval.examples": 8,
                                     "task.train_lengths": "1-4", "eval.bins": ["1-4"], "train.progress": False,
                                     "train.precision": precision, "run_dir": str(tmp_path / "run")}))
    assert summary["precision"] == precision and "autotune" not in summary


def test_short_steps_are_timed_in_more_rounds_up_to_a_bound():
    """A 10 ms step measured 3 times is noise: rounds grow until the timing reaches min_seconds, at most
    MAX_ROUNDS; long steps keep the given rounds."""
    calls: list = []
    cands = [("fp32", "auto"), ("bf16", "auto")]
    autotune.pick_fastest(cands, fake_measure({c: 0.01 for c in cands}, calls), rounds=3, min_seconds=0.5)
    assert len(calls) == 2 * 25  # 0.02 s per round -> 25 rounds
    calls.clear()
    autotune.pick_fastest(cands, fake_measure({c: 0.0001 for c in cands}, calls), rounds=3, min_seconds=0.5)
    assert len(calls) == 2 * autotune.MAX_ROUNDS
    calls.clear()
    autotune.pick_fastest(cands, fake_measure({c: 1.0 for c in cands}, calls), rounds=3, min_seconds=0.5)
    assert len(calls) == 2 * 3
