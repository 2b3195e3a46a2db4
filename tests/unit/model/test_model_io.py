"""Model checkpoints: save/load round trip, run-directory resolution, and one-line errors for damaged input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tinyformer.errors import TinyformerError
from tinyformer.model.io import load_model, save_model
from tinyformer.train.rundir import load_model as load_run_model
from tinyformer.train.rundir import resolve_checkpoint

SIZES = dict(vocab_size=41, max_seq_len=32)


def make_run(tmp_path, model, steps=(10, 20), best=10):
    run = tmp_path / "run"
    for step in steps:
        save_model(model, run / "checkpoints" / f"step-{step:08d}")
    index = {"latest": f"step-{steps[-1]:08d}", "best": f"step-{best:08d}" if best else None}
    (run / "checkpoints" / "index.json").write_text(json.dumps(index))
    return run


@pytest.mark.parametrize("tie", [True, False])
def test_save_and_load_give_the_same_model(tiny_model, tmp_path, tie):
    model = tiny_model(**SIZES, tie_embeddings=tie, position="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=2)
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
    save_model(model, tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "model.json").read_text()) == model.config.to_dict()
    names = set(load_file(str(tmp_path / "ckpt" / "model.safetensors")))
    assert ("lm_head.weight" in names) == (not tie)  # the tied head is embed_tokens, stored once
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config == model.config and not loaded.training
    ids = torch.randint(0, 41, (2, 9))
    assert torch.equal(loaded(ids)[0], model.eval()(ids)[0])
    if tie:
        assert loaded.lm_head.weight is loaded.embed_tokens.weight


def test_run_directory_resolves_latest_and_best(tiny_model, tmp_path):
    run = make_run(tmp_path, tiny_model(**SIZES))
    assert resolve_checkpoint(run, "latest").name == "step-00000020"
    assert resolve_checkpoint(run).name == "step-00000010", "by default the best checkpoint, when there is one"
    assert resolve_checkpoint(run, "best").name == "step-00000010"
    assert resolve_checkpoint(run / "checkpoints", "latest").name == "step-00000020"
    assert (
        resolve_checkpoint(run / "checkpoints" / "step-00000010" / "model.safetensors").name
        == "step-00000010"
    )


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("missing", "does not exist"),
        ("no_index", "has no checkpoints/index.json"),
        ("no_best", "names no 'best' checkpoint"),
        ("index_points_nowhere", "is missing"),
        ("bad_index", "index.json is corrupt"),
        ("truncated_weights", "cannot be read"),
        ("no_config", "has no model.json"),
        ("config_typo", "unknown config key 'model.n_layer'; did you mean 'n_layers'"),
        ("other_model", "the weights belong to another model"),
    ],
)
def test_damaged_checkpoints_are_one_line_errors(tiny_model, tmp_path, damage, needle):
    run = make_run(tmp_path, tiny_model(**SIZES), steps=(10,), best=10 if damage != "no_best" else None)
    ckpt = run / "checkpoints" / "step-00000010"
    index = run / "checkpoints" / "index.json"
    if damage == "missing":
        run = tmp_path / "nope"
    elif damage == "no_index":
        index.unlink()
    elif damage == "index_points_nowhere":
        index.write_text(json.dumps({"latest": "step-00000099"}))
    elif damage == "bad_index":
        index.write_text("{not json")
    elif damage == "truncated_weights":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "no_config":
        (ckpt / "model.json").unlink()
    elif damage == "config_typo":
        cfg = json.loads((ckpt / "model.json").read_text())
        cfg["n_layer"] = cfg.pop("n_layers")
        (ckpt / "model.json").write_text(json.dumps(cfg))
    elif damage == "other_model":
        save_model(tiny_model(**SIZES, d_model=64), tmp_path / "other")
        (ckpt / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    which = "best" if damage == "no_best" else "latest"
    with pytest.raises(TinyformerError) as err:
        load_run_model(run, which)
    assert needle in str(err.value) and "\n" not in str(err.value)
