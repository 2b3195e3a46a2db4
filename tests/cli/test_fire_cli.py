"""`model.position=fire` end to end: `lengen train --pe fire` stopped and resumed equals the straight run bit for
bit (FIRE's parameters included), and a language-model run with it trains, evaluates, samples, draws its
attention, and is refused by the HF export and the Hub's in one line naming the scheme."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyformer.errors import TinyformerError

LAB = ["train.max_steps=8", "train.eval_every=4", "train.log_every=1", "eval.stop_accuracy=2.0"]


def lengen_fire(tiny_task_run, out: Path, *overrides: str) -> list[str]:
    args = tiny_task_run.args(out, *LAB, *overrides)
    args[args.index("--pe") + 1] = "fire"
    return args


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors")


def test_lengen_train_pe_fire_stopped_and_resumed_equals_the_straight_run(cli, tiny_task_run, tmp_path, records):
    straight, split = tmp_path / "straight", tmp_path / "split"
    cli(*lengen_fire(tiny_task_run, straight), check=True)
    config = json.loads((straight / "summary.json").read_text())
    assert config["scheme"] == "fire" and config["status"] == "finished"
    cli(*lengen_fire(tiny_task_run, split, "train.stop_at_step=5"), check=True)
    assert json.loads((split / "summary.json").read_text())["status"] == "paused"
    cli(*lengen_fire(tiny_task_run, split), check=True)
    assert json.loads((split / "summary.json").read_text())["accuracy"] == config["accuracy"]
    assert records(split, timing=False) == records(straight, timing=False)
    mine, theirs = weights(split, 8), weights(straight, 8)
    fire = {k for k in mine if k.startswith("position_bias.")}
    assert fire == {f"position_bias.{n}" for n in ("c", "threshold", "hidden.weight", "hidden.bias", "out.weight",
                                                  "out.bias")}
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    # and training moved them: they are trained, not fixed
    start = weights(straight, 4)
    assert not torch.equal(start["position_bias.out.weight"], theirs["position_bias.out.weight"])


@pytest.fixture(scope="module")
def fire_lm(tiny_lm_run) -> Path:
    return tiny_lm_run("model.position=fire", "train.max_steps=6", "train.eval_every=3")


def test_a_language_model_run_with_fire_trains_evaluates_and_samples(cli, fire_lm, records):
    trained = records(fire_lm, "train")
    assert trained[-1]["train_loss"] < trained[0]["train_loss"]
    logged = records(fire_lm, "eval")[-1]
    out = json.loads(cli("eval", "--ckpt", fire_lm, "--which", "latest", "--json", check=True).stdout)
    assert out["loss"] == pytest.approx(logged["val_loss"], rel=1e-5)
    a = cli("sample", "--ckpt", fire_lm, "--prompt", "the cat", "--seed", "1", "--max-new-tokens", "10", check=True)
    b = cli("sample", "--ckpt", fire_lm, "--prompt", "the cat", "--seed", "1", "--max-new-tokens", "10", check=True)
    assert a.stdout == b.stdout and a.stdout.startswith("the cat")


def test_attention_of_a_fire_run_draws_every_layer_with_causal_rows(cli, fire_lm, tmp_path):
    out = tmp_path / "maps"
    cli("attention", "--ckpt", fire_lm, "--text", "the cat sat", "--out", out, check=True)
    assert (out / "layer_00.png").read_bytes()[:4] == b"\x89PNG"
    probs = np.load(out / "attention.npz")["layer_0"]
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.abs(np.triu(probs, k=1)).max() == 0.0


def test_the_export_and_the_hub_refuse_a_fire_run_in_one_line(cli, fire_lm, tmp_path, one_line_error):
    from tinyformer.lm import publish
    from tinyformer.train.rundir import Run

    one_line_error(cli("export", "--ckpt", fire_lm, "--out", tmp_path / "out"), "position='fire' has no HF equivalent")
    assert not (tmp_path / "out").exists()
    run = Run(fire_lm, None)
    with pytest.raises(TinyformerError, match="position='fire' has no HF equivalent") as err:
        publish.export_run(run, run.load_model(), tmp_path / "hub", repo="someone/fire")
    assert "\n" not in str(err.value) and not (tmp_path / "hub").exists()
