"""`tinyformer export` of a run directory or one checkpoint: Hugging Face files that transformers loads with our
logits and our tokenizer's ids, --force to replace, and one-line refusals of a damaged checkpoint or a model
without an HF equivalent that leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tinyformer.model import ModelConfig
from tinyformer.model.io import save_model

VOCAB = 97


def run_of(model, tmp_path: Path, step: int = 10) -> Path:
    """A run directory holding `model` as its one (latest) checkpoint."""
    run = tmp_path / "run"
    save_model(model, run / "checkpoints" / f"step-{step:08d}")
    (run / "checkpoints" / "index.json").write_text(json.dumps({"latest": f"step-{step:08d}", "best": None}))
    return run


def test_export_cli_from_a_run_directory(tmp_path, cli, randomised, one_line_error):
    transformers = pytest.importorskip("transformers")
    model = randomised(ModelConfig.preset("llama", vocab_size=VOCAB, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                                          max_seq_len=48, rope_theta=500.0))
    run = run_of(model, tmp_path)
    cli("export", "--ckpt", run, "--format", "hf", "--out", tmp_path / "hf", check=True)
    hf_model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        assert (hf_model(ids).logits - model(ids)[0]).abs().max().item() <= 1e-4
    one_line_error(cli("export", "--ckpt", run, "--out", tmp_path / "hf"), "already exists; pass --force")
    cli("export", "--ckpt", run, "--out", tmp_path / "hf", "--force", check=True)
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_export_cli_writes_the_runs_tokenizer(tmp_path, cli, randomised):
    transformers = pytest.importorskip("transformers")
    from tinyformer.tokenizer import train_bpe

    tok = train_bpe(["hello world, hello there; a world of words"] * 4, 290, special_tokens=["<|endoftext|>"])
    cfg = ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layers=1, d_model=32, n_heads=2, max_seq_len=32)
    run = run_of(randomised(cfg), tmp_path, step=1)
    tok.save(run / "tokenizer")
    cli("export", "--ckpt", run / "checkpoints" / "step-00000001", "--out", tmp_path / "hf", check=True)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "hello words of the world"
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["eos_token_id"] == tok.eot_id


def test_cli_export_of_a_damaged_checkpoint_fails_cleanly(tiny_model, tmp_path, cli, one_line_error):
    run = run_of(tiny_model(), tmp_path)
    (run / "checkpoints" / "step-00000010" / "model.safetensors").write_bytes(b"garbage")
    one_line_error(cli("export", "--ckpt", run, "--format", "hf", "--out", tmp_path / "out"), "cannot be read")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary leftovers either


def test_cli_export_refuses_a_scheme_without_hf_equivalent(tiny_model, tmp_path, cli, one_line_error):
    run = run_of(tiny_model("nope"), tmp_path)
    one_line_error(cli("export", "--ckpt", run, "--out", tmp_path / "out"), "position='nope' has no HF equivalent")
    assert not (tmp_path / "out").exists()
