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
                                     "train.precision": "auto", "train.peak_flops": 1e12,
                                     "run_dir": str(tmp_path / "run")}))
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
                                     "train.precision": precision, "train.peak_flops": 1e12,
                                     "run_dir": str(tmp_path / "run")}))
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


# ------------------------------------------------------------- every candidate trains like float32

TOLERANCE = 0.03  # the largest relative gap of any step's loss to float32's over 20 steps at lr 3e-3


def batch_kinds() -> dict[str, dict[str, torch.Tensor]]:
    """The batches a training step sees: text windows, right-padded rows (data.sampling=rows, lab tasks)
    with and without offset position ids, and left-padded rows with an attention mask."""
    g = torch.Generator().manual_seed(0)
    vocab, b, t = 32, 8, 24
    ids = torch.randint(0, vocab, (b, t), generator=g)
    nxt = torch.roll(ids, -1, 1)
    lens = torch.randint(6, t + 1, (b,), generator=g)
    right = torch.arange(t)[None] < lens[:, None]
    left = torch.arange(t)[None] >= t - lens[:, None]
    rows = {"ids": ids.masked_fill(~right, 0), "targets": nxt.masked_fill(~right, -100)}
    return {
        "plain": {"ids": ids, "targets": nxt},
        "rows": rows,
        "rows+offsets": {**rows, "position_ids": torch.arange(t) + torch.randint(0, 8, (b, 1), generator=g)},
        "left-padded": {"ids": ids.masked_fill(~left, 0), "targets": nxt.masked_fill(~left, -100),
                        "attention_mask": left.long()},
    }


CASES = [("plain", "learned", 1), ("rows", "learned", 4), ("rows", "rope", 4), ("rows+offsets", "learned", 4),
         ("left-padded", "alibi", 1), ("left-padded", "learned", 1)]


@pytest.mark.parametrize("kind,position,groups", CASES)
def test_every_candidate_trains_like_float32(kind, position, groups):
    from tinyformer.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("gpt2", vocab_size=32, n_layers=2, n_heads=4, d_model=32,
                                           max_seq_len=40, position=position))
    batch = batch_kinds()[kind]
    cpu = torch.device("cpu")
    reference = autotune.loss_trajectory(model, batch, cpu, autotune.REFERENCE, groups, steps=20, lr=3e-3)
    assert reference[-1] < 0.8 * reference[0], "the steps must train, or agreement says nothing"
    for candidate in autotune.CPU_CANDIDATES:
        losses = autotune.loss_trajectory(model, batch, cpu, candidate, groups, steps=20, lr=3e-3)
        assert autotune.disagreement(losses, reference) < TOLERANCE, (candidate, losses, reference)


def test_the_agreement_check_sees_a_wrong_computation():
    """Left-padded rows without their attention mask let tokens see padding: the losses part by more than
    the tolerance, so a kernel that mishandled padding would be refused."""
    from tinyformer.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("gpt2", vocab_size=32, n_layers=2, n_heads=4, d_model=32,
                                           max_seq_len=40))
    batch = batch_kinds()["left-padded"]
    unmasked = {k: v for k, v in batch.items() if k != "attention_mask"}
    cpu = torch.device("cpu")
    right = autotune.loss_trajectory(model, batch, cpu, autotune.REFERENCE, steps=20, lr=3e-3)
    wrong = autotune.loss_trajectory(model, unmasked, cpu, autotune.REFERENCE, steps=20, lr=3e-3)
    assert autotune.disagreement(wrong, right) > TOLERANCE
    assert autotune.disagreement(right, right) == 0.0


def test_auto_passes_over_a_faster_candidate_that_trains_differently(monkeypatch):
    """The fastest candidate's losses part from float32's: the next fastest that agrees is chosen, and a
    candidate not faster than float32 by the margin never is."""
    from tinyformer.model import ModelConfig, Transformer

    model = Transformer(ModelConfig(vocab_size=11, n_layers=1, n_heads=2, d_model=16))
    batch = {"ids": torch.zeros(2, 5, dtype=torch.long), "targets": torch.zeros(2, 5, dtype=torch.long)}
    real = autotune.loss_trajectory

    def trajectory(model, batch, device, candidate, *args, **kw):
        losses = real(model, batch, device, candidate, *args, **kw)
        return [x * 1.2 for x in losses] if candidate == ("bf16", "math") else losses

    monkeypatch.setattr(autotune, "loss_trajectory", trajectory)
    cands = autotune.CPU_CANDIDATES
    times = {"fp32/auto": 1.0, "fp32/math": 1.1, "bf16/auto": 0.8, "bf16/math": 0.5, "bf16/fp32": 0.99}
    choice, gaps = autotune.agreeing_choice(model, batch, torch.device("cpu"), 1, cands, times, ("bf16", "math"))
    assert choice == ("bf16", "auto") and gaps["bf16/math"] > autotune.AGREEMENT_TOLERANCE
    times = {"fp32/auto": 1.0, "fp32/math": 1.1, "bf16/auto": 0.99, "bf16/math": 0.5, "bf16/fp32": 0.985}
    choice, _ = autotune.agreeing_choice(model, batch, torch.device("cpu"), 1, cands, times, ("bf16", "math"))
    assert choice == ("fp32", "auto")
