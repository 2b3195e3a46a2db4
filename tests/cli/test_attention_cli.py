"""`tinyformer attention`: per-layer PNGs and raw probabilities for task runs and language-model runs.

The probabilities are checked for shape, causality and row sums, and against HF GPT-2's own attentions
(`output_attentions=True`) on the same weights exported to the HF format.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tinyformer.model import ModelConfig, Transformer
from tinyformer.model.io import save_model


@pytest.fixture(scope="module")
def task_run(tiny_task_run, tmp_path_factory):
    """A real (tiny, two-step) lab run of the addition task with Abacus positions."""
    out = tmp_path_factory.mktemp("lab") / "add-run"
    tiny_task_run(out, **{"task.name": "add:reverse=false", "model.position": "abacus", "model.n_layers": 2,
                          "model.n_heads": 4, "model.d_model": 32, "train.max_steps": 2, "task.train_lengths": "1-3",
                          "eval.bins": ["1-3"], "eval.examples": 8, "train.eval_every": 2, "eval.greedy": False,
                          "model.n_positions": 16, "train.warmup": 1})
    return out


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A language-model run directory as the trainer lays it out: tokenizer/ + checkpoints/index.json."""
    from tinyformer.tokenizer import train_bpe

    run = tmp_path_factory.mktemp("lm") / "run"
    tok = train_bpe(["+101+2001+3011+\n+12+873+993+\n" * 50], 270, special_tokens=["<|endoftext|>"])
    tok.save(run / "tokenizer")
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layers=2, n_heads=2, d_model=32,
                                           max_seq_len=64))
    save_model(model, run / "checkpoints" / "step-00000001")
    (run / "checkpoints" / "index.json").write_text(json.dumps({"latest": "step-00000001"}))
    return run, tok, model


def check_probabilities(maps: list[np.ndarray], n_layers: int, n_heads: int, t: int) -> None:
    assert len(maps) == n_layers
    for probs in maps:
        assert probs.shape == (n_heads, t, t)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        assert (probs >= 0).all()
        assert np.abs(np.triu(probs, k=1)).max() == 0.0, "a query must not attend to later keys"


def test_task_run_writes_one_png_per_layer_and_valid_probabilities(cli, task_run, tmp_path):
    out = tmp_path / "maps"
    text = "+101+2001+2102+"
    proc = cli("attention", "--ckpt", task_run, "--text", text, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["attention.npz", "layer_00.png", "layer_01.png"]
    assert all((out / f"layer_{i:02d}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for i in range(2))
    data = np.load(out / "attention.npz")
    check_probabilities([data["layer_0"], data["layer_1"]], 2, 4, len(text))
    assert data["tokens"].tolist() == list(text)
    # Abacus run: the position ids are each digit's index inside its number, 0 on "+"
    assert data["position_ids"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0]
    # the same ids given as --ids give the same maps
    ids = ",".join(map(str, data["ids"].tolist()))
    cli("attention", "--ckpt", task_run, "--ids", ids, "--out", tmp_path / "by-ids", check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "by-ids" / "attention.npz")["layer_1"], data["layer_1"])


def test_lm_run_maps_match_hf_gpt2_attentions(cli, lm_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    from tinyformer.model.hf import export_hf

    run, tok, model = lm_run
    text = "+101+:2001+:3011+"
    out = tmp_path / "maps"
    cli("attention", "--ckpt", run, "--text", text, "--out", out, check=True)
    data = np.load(out / "attention.npz")
    ids = tok.encode(text)
    assert data["ids"].tolist() == ids
    assert "".join(data["tokens"].tolist()) == text
    maps = [data["layer_0"], data["layer_1"]]
    check_probabilities(maps, 2, 2, len(ids))
    export_hf(model, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    with torch.no_grad():
        reference = hf(torch.tensor([ids]), output_attentions=True).attentions
    for ours, theirs in zip(maps, reference):
        np.testing.assert_allclose(ours, theirs[0].numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "which,args,message",
    [
        ("task", ["--text", "+1z+2+"], "outside the vocabulary"),
        ("task", ["--text", "+101+:2001+:3011+"], "outside the vocabulary"),
        ("task", ["--ids", "1,2,999"], "outside the vocabulary"),
        ("task", ["--ids", "1,x"], "comma-separated"),
        ("lm", ["--ids", "5,100000"], "outside the vocabulary"),
        ("missing", ["--text", "+1+"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(cli, task_run, lm_run, tmp_path, one_line_error, which, args,
                                                  message):
    ckpt = {"task": task_run, "lm": lm_run[0], "missing": tmp_path / "nope"}[which]
    out = tmp_path / "maps"
    one_line_error(cli("attention", "--ckpt", ckpt, *args, "--out", out), message)
    assert not out.exists()


def test_a_symbol_outside_the_vocabulary_is_named(cli, task_run, tmp_path, one_line_error):
    one_line_error(cli("attention", "--ckpt", task_run, "--text", "+12+g+", "--out", tmp_path / "maps"),
                   "outside the vocabulary", "'g'")
    assert not (tmp_path / "maps").exists()
