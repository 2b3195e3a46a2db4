"""A run exported ready to publish (weights, config, tokenizer with pad/eos and the true context, model card)
and `tinyformer push` up to the upload call (no Hub is reachable from the test machines)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from tinyformer.data.tokenfile import write_token_file  # noqa: E402
from tinyformer.tokenizer import train_bpe  # noqa: E402

TEXT = "Once upon a time there was a little dog named Max. Max liked to play in the park with a red ball. "


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, tinyformer_main) -> Path:
    """A tiny GPT-2-shaped run trained a few steps on a BPE tokenizer with <|endoftext|> and <|pad|>."""
    root = tmp_path_factory.mktemp("publish")
    tok = train_bpe([TEXT * 20], 300, ["<|endoftext|>", "<|pad|>"])
    tok.save(root / "tok")
    ids = np.array(tok.encode((TEXT + "<|endoftext|>") * 40, allowed_special="all"))
    for name in ("train", "val"):
        write_token_file(root / f"{name}.bin", ids, tok.vocab_size, tokenizer_fingerprint=tok.fingerprint,
                         n_bytes=len(TEXT) * 40, sources=[{"path": "stories.txt", "sha256": "0" * 64}])
    run = root / "run"
    rc = tinyformer_main(["train", f"run_dir={run}", "model.preset=gpt2", "model.n_layers=1", "model.d_model=32",
               "model.n_heads=2", "model.max_seq_len=48", f"data.train={root / 'train.bin'}",
               f"data.val={root / 'val.bin'}", f"data.tokenizer={root / 'tok'}", "train.max_steps=4",
               "train.batch_size=4", "train.seq_len=32", "train.precision=fp32", "train.threads=1",
               "train.progress=false", "train.sample_tokens=0", "train.warmup=1", "train.peak_flops=1e12"])
    assert rc == 0
    return run


def test_export_is_ready_to_publish(cli, lm_run, tmp_path):
    out = tmp_path / "hf"
    proc = cli("export", "--ckpt", lm_run, "--format", "hf", "--out", out, check=True)
    assert "model card" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "tokenizer.json", "tokenizer_config.json"]
    tok = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|endoftext|>"
    assert tok.model_max_length == 48  # learned positions: the table, not 1e9
    config = json.loads((out / "config.json").read_text())
    assert config["pad_token_id"] == tok.pad_token_id == tok.convert_tokens_to_ids("<|pad|>")
    batch = tok(["Once upon", "Max liked to play"], padding=True, return_tensors="pt")
    assert batch.input_ids.shape[0] == 2 and (batch.input_ids == tok.pad_token_id).any()
    assert model(**batch).logits.shape[:2] == batch.input_ids.shape
    card = (out / "README.md").read_text()
    summary = json.loads((lm_run / "summary.json").read_text())
    for needle in ("library_name: transformers", "## Architecture", "## Training data and budget", "## Metrics",
                   "## How to load", "GPT2LMHeadModel", f"{summary['params']:,}", "`stories.txt`",
                   f"loss {summary['val_loss']:.4f}", f'AutoModelForCausalLM.from_pretrained("{out}")',
                   "4 steps of 4 sequences x 32 tokens"):
        assert needle in card, needle


def test_rope_export_takes_the_training_context_and_eos_pads_without_a_pad_token(tmp_path):
    from tinyformer.tokenizer import Tokenizer
    from tinyformer.tokenizer.export import hf_tokenizer_config, pad_token

    tok = Tokenizer([], ["<|endoftext|>"])
    assert pad_token(tok) == "<|endoftext|>" and pad_token(Tokenizer([], [])) is None
    config = hf_tokenizer_config(tok, model_max_length=256)
    assert config["model_max_length"] == 256 and config["pad_token"] == "<|endoftext|>"
    assert hf_tokenizer_config(Tokenizer([], []))["model_max_length"] == 1_000_000_000  # a tokenizer alone


class FakeApi:
    """Records what push asks of huggingface_hub.HfApi; `fail` makes the upload raise it."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls, self.fail, self.uploaded = [], fail, {}

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        if self.fail is not None:
            raise self.fail
        folder = Path(kwargs["folder_path"])
        self.uploaded = {p.name: p.read_bytes() for p in folder.iterdir()}


def test_push_exports_and_uploads_with_a_model_card(cli, lm_run, monkeypatch):
    from tinyformer.lm import publish

    api = FakeApi()
    tokens = []
    monkeypatch.setattr(publish, "hub_api", lambda token: tokens.append(token) or api)
    proc = cli("push", "--ckpt", lm_run, "--repo", "someone/tiny-stories", "--token", "hf_x", "--private",
                    check=True)
    assert tokens == ["hf_x"]
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1] == {"repo_id": "someone/tiny-stories", "repo_type": "model", "private": True,
                               "exist_ok": True}
    assert sorted(api.uploaded) == ["README.md", "config.json", "model.safetensors", "tokenizer.json",
                                    "tokenizer_config.json"]
    assert b'from_pretrained("someone/tiny-stories")' in api.uploaded["README.md"]
    assert "pushed" in proc.stdout and "https://huggingface.co/someone/tiny-stories" in proc.stdout
    assert not Path(api.calls[1][1]["folder_path"]).exists()  # the temporary export is gone


def test_push_without_token_or_network_is_one_line(one_line_error, cli, lm_run, monkeypatch, tmp_path):
    from tinyformer.lm import publish

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no saved login
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    one_line_error(cli("push", "--ckpt", lm_run, "--repo", "someone/x"), "no Hugging Face token")
    monkeypatch.setattr(publish, "hub_api", lambda token: FakeApi(ConnectionError("Failed to resolve huggingface.co")))
    one_line_error(cli("push", "--ckpt", lm_run, "--repo", "someone/x", "--token", "hf_x"), "cannot be reached")
    one_line_error(cli("push", "--ckpt", lm_run, "--repo", "not a repo", "--token", "hf_x"),
                   "is not a Hub repository name")


def test_real_hub_api_fails_in_one_line_offline(one_line_error, cli, lm_run, monkeypatch):
    # the real huggingface_hub, with the network cut at the socket: the error is still one line
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse())
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    one_line_error(cli("push", "--ckpt", lm_run, "--repo", "someone/x", "--token", "hf_x"),
                   "could not push to the Hugging Face Hub repo someone/x")


def test_the_model_cards_loading_example_runs_within_the_models_context(cli, lm_run, tmp_path, capsys):
    import re

    out = tmp_path / "hf"
    cli("export", "--ckpt", lm_run, "--format", "hf", "--out", out, check=True)
    card = (out / "README.md").read_text()
    code = re.search(r"## How to load\n\n```python\n(.*?)```", card, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)  # the card's own example, as a reader pastes it (48-token learned context)
    printed = capsys.readouterr().out
    assert printed.startswith("Once upon a time")
    prompt_tokens = namespace["ids"].shape[1]
    assert prompt_tokens < namespace["out"].shape[1] <= 48
