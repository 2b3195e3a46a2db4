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
