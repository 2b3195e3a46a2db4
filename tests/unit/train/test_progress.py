"""What the engine prints while it trains: torch.compile announced before the slow first step
(tinyformer.train.start), and an ETA that leaves out the slow first steps (tinyformer.train.metrics)."""

from __future__ import annotations

from types import SimpleNamespace


def test_compile_is_announced_before_the_slow_first_step(capsys):
    from tinyformer.model import ModelConfig, Transformer
    from tinyformer.train.config import RunConfig, TrainConfig
    from tinyformer.train.start import _announce

    cfg = RunConfig(model=ModelConfig(n_layers=1, d_model=32, n_heads=2, vocab_size=64),
                    train=TrainConfig(compile=True, max_steps=5, warmup=1))
    _announce(cfg, Transformer(cfg.model), SimpleNamespace(step=0))
    out = capsys.readouterr().out
    assert "torch.compile: the first step compiles the model" in out
    assert "1 layer, position=learned" in out


def test_the_eta_leaves_out_the_slow_first_steps(capsys):
    # a first step that compiles (here 0.6 s) then steps of 0.01 s: 500 steps left take about 5 s, not minutes
    import time

    from tinyformer.train.metrics import Progress

    progress = Progress(total=510, enabled=True, log_every=1)
    time.sleep(0.6)
    for step in range(1, 11):
        progress.update(step, 2.0, 1e-3, 1000.0)
        time.sleep(0.01)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("step 1/510 ") and lines[0].endswith(" eta ?")  # nothing measured yet
    minutes, seconds = lines[-1].rsplit(" eta ", 1)[1].rstrip("s").split("m")
    assert 3 <= 60 * int(minutes) + int(seconds) <= 20, lines[-1]  # the old ETA counted the 0.6 s: ~30 s


def test_under_a_budget_the_eta_is_the_budget_left_when_it_ends_the_run_first(capsys):
    # 10,000 steps of 0.01 s would take ~100 s, but a 5 s budget with 2 s spent ends the run in ~3 s
    import time

    from tinyformer.train.metrics import Progress

    progress = Progress(total=10_000, enabled=True, log_every=1, budget_s=5.0)
    for step in range(1, 6):
        progress.update(step, 2.0, 1e-3, 1000.0, elapsed=1.6 + 0.1 * step)
        time.sleep(0.01)
    last = capsys.readouterr().out.splitlines()[-1]
    assert " budget 2.1/5s " in last, last
    assert last.endswith(" eta 0m02s"), last  # 5 - 2.1 = 2.9 s left, not ~100 s of steps


def test_under_a_budget_the_eta_follows_the_steps_when_max_steps_ends_the_run_first(capsys):
    import time

    from tinyformer.train.metrics import Progress

    progress = Progress(total=8, enabled=True, log_every=1, budget_s=3600.0)
    for step in range(1, 6):
        progress.update(step, 2.0, 1e-3, 1000.0, elapsed=0.1 * step)
        time.sleep(0.01)
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.endswith(" eta 0m00s"), last  # 3 steps of ~0.01 s left, not the hour of budget
