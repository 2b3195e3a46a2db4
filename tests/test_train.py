"""Training engine: exact resume, signals, checkpoints, metrics, eval/sample/plot, and bad input, via the CLI."""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pseudo_english

from tinyformer.data.tokenfile import write_token_file
from tinyformer.errors import TinyformerError
from tinyformer.tokenizer import Tokenizer

TINY_MODEL = ["model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.max_seq_len=16"]
FAST = ["train.precision=fp32", "train.peak_flops=1e12", "train.threads=1", "train.log_every=1", "train.progress=false", "train.batch_size=4",
        "train.warmup=2", "train.lr=3e-3", "train.min_lr=3e-4", "train.sample_tokens=8"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """A byte-level tokenizer and train/val token files of synthetic text."""
    root = tmp_path_factory.mktemp("corpus")
    tok = Tokenizer([], [])
    tok.save(root / "tok")
    text = pseudo_english()
    ids = np.array(tok.encode(text))
    cut = int(len(ids) * 0.9)
    for name, part in (("train", ids[:cut]), ("val", ids[cut:])):
        write_token_file(root / f"{name}.bin", part, 256, tokenizer_fingerprint=tok.fingerprint, n_bytes=len(part))
    return {"root": root, "tok": root / "tok", "train": root / "train.bin", "val": root / "val.bin"}


@pytest.fixture
def cli(cli):
    return cli


def data_args(corpus) -> list[str]:
    return [f"data.train={corpus['train']}", f"data.val={corpus['val']}", f"data.tokenizer={corpus['tok']}"]


def train(cli, run_dir: Path, corpus, *extra: str, check: bool = True):
    return cli("train", f"run_dir={run_dir}", *data_args(corpus), *TINY_MODEL, *FAST, *extra, check=check)


def metrics(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinyformer: error:"), proc.stderr
    return lines[0]


# ---------------------------------------------------------------- pure pieces


def test_schedule_shapes():
    from tinyformer.train.schedule import lr_at

    kw = dict(lr=1.0, min_lr=0.1, warmup=10, total=110)
    assert lr_at(0, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(9, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_at(60, schedule="cosine", **kw) == pytest.approx(0.55)  # half way down the cosine
    assert lr_at(110, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(500, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(60, schedule="linear", **kw) == pytest.approx(0.55)
    assert lr_at(35, schedule="linear", **kw) == pytest.approx(1.0 - 0.9 * 0.25)
    assert lr_at(100, schedule="constant", **kw) == 1.0
    cos = [lr_at(s, schedule="cosine", **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(cos, cos[1:]))


def test_weight_decay_only_on_matrices_and_embeddings():
    from tinyformer.model import ModelConfig, Transformer
    from tinyformer.train.optim import build_optimizer

    model = Transformer(ModelConfig(vocab_size=64, n_layers=1, d_model=16, n_heads=2, max_seq_len=8))
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        should = p.dim() >= 2  # linear weights and the embedding tables
        assert (id(p) in decayed) == should, name
    assert any("embed" in n and id(p) in decayed for n, p in model.named_parameters())


def test_sampler_ranks_split_the_global_batch(corpus):
    from tinyformer.lm.sampler import TokenFileBatches

    for sampling in ("random", "sequential"):
        whole = TokenFileBatches(corpus["train"], 4, 16, sampling=sampling, seed=3)
        parts = [TokenFileBatches(corpus["train"], 2, 16, sampling=sampling, seed=3, rank=r, world_size=2)
                 for r in range(2)]
        for _ in range(3):
            full = whole.next_batch()
            pieces = [p.next_batch() for p in parts]
            assert torch.equal(full["ids"], torch.cat([p["ids"] for p in pieces]))
            assert torch.equal(full["targets"][:, :-1], full["ids"][:, 1:])


def test_sampler_state_resumes_exactly(corpus):
    from tinyformer.lm.sampler import TokenFileBatches

    for sampling in ("random", "sequential"):
        a = TokenFileBatches(corpus["train"], 8, 16, sampling=sampling, seed=1)
        for _ in range(400):  # several sequential epochs
            a.next_batch()
        b = TokenFileBatches(corpus["train"], 8, 16, sampling=sampling, seed=1)
        b.load_state_dict(a.state_dict())
        for _ in range(5):
            assert torch.equal(a.next_batch()["ids"], b.next_batch()["ids"])


def test_sequential_pass_covers_every_window_once(corpus):
    from tinyformer.data.tokenfile import read_token_file
    from tinyformer.lm.sampler import TokenFileBatches

    tokens = np.asarray(read_token_file(corpus["train"])[0], dtype=np.int64)
    s = TokenFileBatches(corpus["train"], 1, 16, sampling="sequential", seed=0)
    every_window = sorted(map(tuple, tokens[: s.n_windows * 16].reshape(-1, 16)))
    drawn = sorted(tuple(s.next_batch()["ids"][0].tolist()) for _ in range(s.n_windows))
    assert drawn == every_window and s.epoch == 1 and s.index == 0


def test_checkpoints_keep_last_k_and_best(tmp_path):
    from tinyformer.model import ModelConfig, Transformer
    from tinyformer.train.checkpoint import record_score, save_checkpoint
    from tinyformer.train.rundir import read_index

    model = Transformer(ModelConfig(vocab_size=32, n_layers=1, d_model=8, n_heads=2, max_seq_len=4))
    for step, loss in zip(range(1, 6), [3.0, 1.0, 2.0, 4.0, 5.0]):
        saved = save_checkpoint(tmp_path, step, model, {"step": step}, keep_last=2)
        record_score(tmp_path, saved.name, loss, keep_last=2)  # the evaluation of the saved step
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert names == ["step-00000002", "step-00000004", "step-00000005"]
    index = read_index(tmp_path)
    assert index["latest"] == "step-00000005" and index["best"] == "step-00000002"
    assert index["best_score"] == 1.0


def test_failed_checkpoint_write_leaves_latest_intact(tmp_path, monkeypatch):
    import tinyformer.model.io as model_io
    from tinyformer.model import ModelConfig, Transformer
    from tinyformer.train.checkpoint import save_checkpoint
    from tinyformer.train.rundir import latest_checkpoint

    model = Transformer(ModelConfig(vocab_size=32, n_layers=1, d_model=8, n_heads=2, max_seq_len=4))
    save_checkpoint(tmp_path, 1, model, {"step": 1})

    def disk_full(model, ckpt_dir):
        (Path(ckpt_dir) / "model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_io, "save_model", disk_full)
    with pytest.raises(TinyformerError, match="no space left on the device .* while writing .*step-00000002; free"):
        save_checkpoint(tmp_path, 2, model, {"step": 2})
    assert latest_checkpoint(tmp_path).name == "step-00000001"
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert sorted(leftovers) == ["index.json", "step-00000001"]


# ---------------------------------------------------------------- runs through the CLI


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_resume_is_bit_identical(cli, tmp_path, corpus, sampling):
    common = ["train.max_steps=8", "train.eval_every=4", "model.dropout=0.1", f"data.sampling={sampling}"]
    train(cli, tmp_path / "straight", corpus, *common)
    train(cli, tmp_path / "split", corpus, *common, "train.stop_at_step=4")
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["status"] == "paused"
    train(cli, tmp_path / "split", corpus, *common, "--resume")
    straight, split = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    assert [r["step"] for r in split] == list(range(1, 9))
    assert [r["train_loss"] for r in split] == [r["train_loss"] for r in straight]
    assert [r["grad_norm"] for r in split] == [r["grad_norm"] for r in straight]
    assert [r["val_loss"] for r in metrics(tmp_path / "split", "eval")] == [
        r["val_loss"] for r in metrics(tmp_path / "straight", "eval")
    ]


def test_run_directory_metrics_and_eval(cli, tmp_path, corpus):
    from tinyformer.data.tokenfile import read_token_file
    from tinyformer.model import ModelConfig, Transformer
    from tinyformer.train.rundir import load_model
    from tinyformer.train.schedule import lr_at

    flops_per_token = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=2, max_seq_len=16)).flops_per_token(16)
    run = tmp_path / "run"
    train(cli, run, corpus, "train.max_steps=12", "train.eval_every=6", "train.keep_last=1")
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "samples.txt", "plots/curves.png",
                 "tokenizer/tokenizer.json", "checkpoints/index.json"):
        assert (run / name).exists(), name
    records = metrics(run)
    assert [r["tokens"] for r in records] == [4 * 16 * s for s in range(1, 13)]
    for r in records:
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, schedule="cosine", lr=3e-3, min_lr=3e-4,
                                              warmup=2, total=12))
        assert r["grad_norm"] > 0 and r["tokens_per_s"] > 0
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * flops_per_token / 1e12)
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 0.5
    evals = metrics(run, "eval")
    assert [e["step"] for e in evals] == [6, 12]

    # the last eval covers the whole validation file: recompute it independently with the saved model
    model = load_model(run, "latest")
    tokens = torch.from_numpy(np.asarray(read_token_file(corpus["val"])[0], dtype=np.int64))
    with torch.no_grad():
        nll = sum(
            torch.nn.functional.cross_entropy(model(tokens[None, i : i + 16])[0][0, : len(tokens[i + 1 : i + 17])],
                                              tokens[i + 1 : i + 17], reduction="sum").item()
            for i in range(0, len(tokens) - 1, 16)
        )
    expected = nll / (len(tokens) - 1)
    assert evals[-1]["val_tokens"] == len(tokens) - 1
    assert evals[-1]["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert evals[-1]["val_ppl"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert evals[-1]["val_bpb"] == pytest.approx(expected / math.log(2), rel=1e-5)  # 1 byte per token

    out = cli("eval", "--ckpt", run, "--which", "latest", "--json", check=True)
    result = json.loads(out.stdout)
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(expected / math.log(2), rel=1e-5)

    a = cli("sample", "--ckpt", run, "--prompt", "the cat", "--seed", "1", "--max-new-tokens", "10", check=True)
    b = cli("sample", "--ckpt", run, "--prompt", "the cat", "--seed", "1", "--max-new-tokens", "10", check=True)
    assert a.stdout == b.stdout and a.stdout.startswith("the cat")

    train(cli, tmp_path / "other", corpus, "train.max_steps=3", "train.eval_every=0")
    png = tmp_path / "both.png"
    cli("plot", run, tmp_path / "other", "--out", png, check=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_records_carry_training_time_that_a_resume_continues(cli, tmp_path, corpus):
    from tinyformer.train.plot import draw_runs

    run, common = tmp_path / "run", ["train.max_steps=6", "train.eval_every=3"]
    train(cli, run, corpus, *common, "train.stop_at_step=3")
    first = metrics(run)
    train(cli, run, corpus, *common, "--resume")
    records, evals = metrics(run), metrics(run, "eval")
    times = [r["elapsed_s"] for r in records]
    assert [r["step"] for r in records] == list(range(1, 7)) and records[:3] == first
    assert times[0] > 0 and all(a < b for a, b in zip(times, times[1:]))
    # the resumed process started its clock at the saved time, not at 0: step 4 comes after step 3's total
    assert times[3] > times[2] > times[3] - times[2]
    # evaluation time is excluded: an evaluation reads the clock of its step's training record
    assert [e["elapsed_s"] for e in evals] == [times[2], times[5]]
    assert json.loads((run / "summary.json").read_text())["elapsed_s"] == round(times[-1], 3)

    out = tmp_path / "time.png"
    cli("plot", run, "--x", "time", "--out", out, check=True)
    assert out.read_bytes()[:4] == b"\x89PNG"
    train_axes = draw_runs([run], x="time").axes[0]
    assert train_axes.get_xlabel() == "training time (s, evaluation excluded)"
    assert train_axes.get_lines()[0].get_xdata().tolist() == times


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path, corpus):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "tinyformer", "train", f"run_dir={run}", *data_args(corpus), *TINY_MODEL, *FAST,
            "train.max_steps=100000", "train.eval_every=0", "train.ckpt_every=0"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err  # 143: a scheduler tells it from a finished run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["step"] >= 3 and summary["signal"] == "SIGTERM"
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert index["latest"] == f"step-{summary['step']:08d}"
    state = json.loads((run / "checkpoints" / index["latest"] / "trainer_state.json").read_text())
    assert state["state"]["step"] == summary["step"]


# ---------------------------------------------------------------- bad input: one line, nothing lost


def test_unknown_config_key_names_the_closest(cli, tmp_path, corpus):
    line = one_line_error(train(cli, tmp_path / "r", corpus, "train.lrr=1e-3", check=False))
    assert "train.lrr" in line and "'lr'" in line
    assert not (tmp_path / "r").exists()


def test_model_key_typo_is_reported_before_any_data_is_read(cli, tmp_path):
    # the data paths do not exist: the typo must still be what the user hears about first
    line = one_line_error(cli("train", f"run_dir={tmp_path / 'r'}", f"data.train={tmp_path / 'none.bin'}",
                              "model.n_layer=2", check=False))
    assert "model.n_layer" in line and "'n_layers'" in line
    assert not (tmp_path / "r").exists()


def test_token_ids_out_of_range(cli, tmp_path, corpus):
    bad = tmp_path / "wide.bin"
    write_token_file(bad, np.arange(600) % 300, 300, n_bytes=600)
    line = one_line_error(cli("train", f"run_dir={tmp_path / 'r'}", f"data.train={bad}", "model.vocab_size=256",
                              *TINY_MODEL, *FAST, check=False))
    assert "299" in line and "vocab_size" in line


def test_fingerprint_mismatch(cli, tmp_path, corpus):
    from tinyformer.tokenizer import train_bpe

    other = train_bpe([pseudo_english(3000)], 270)
    other.save(tmp_path / "other-tok")
    line = one_line_error(train(cli, tmp_path / "r", corpus, f"data.tokenizer={tmp_path / 'other-tok'}", check=False))
    assert "tokenizer" in line and str(corpus["train"]) in line


def test_missing_and_too_short_files(cli, tmp_path, corpus):
    line = one_line_error(train(cli, tmp_path / "r", corpus, f"data.train={tmp_path / 'nope.bin'}", check=False))
    assert "nope.bin" in line and "does not exist" in line
    short = tmp_path / "short.bin"
    write_token_file(short, np.arange(10), 256, tokenizer_fingerprint=Tokenizer([], []).fingerprint, n_bytes=10)
    line = one_line_error(train(cli, tmp_path / "r", corpus, f"data.train={short}", check=False))
    assert "fewer than one window" in line


def test_resume_with_incompatible_config(cli, tmp_path, corpus):
    run = tmp_path / "run"
    train(cli, run, corpus, "train.max_steps=2", "train.eval_every=0")
    before = [(run / name).read_text() for name in ("checkpoints/index.json", "config.yaml", "metrics.jsonl")]
    line = one_line_error(train(cli, run, corpus, "train.max_steps=4", "model.n_layers=3", check=False))
    assert "n_layers" in line and "cannot resume" in line
    assert [(run / name).read_text() for name in ("checkpoints/index.json", "config.yaml", "metrics.jsonl")] == before
    line = one_line_error(train(cli, run, corpus, "train.max_steps=4", "train.batch_size=8", check=False))
    assert "batch" in line
    (run / "checkpoints" / "step-00000002" / "trainer_state.json").write_bytes(b"truncated")
    line = one_line_error(train(cli, run, corpus, "train.max_steps=4", "--resume", check=False))
    assert "corrupt" in line


def test_unwritable_run_dir(cli, tmp_path, corpus):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    line = one_line_error(train(cli, blocker / "run", corpus, check=False))
    assert "run_dir" in line


def test_resume_must_have_a_checkpoint(cli, tmp_path, corpus):
    line = one_line_error(train(cli, tmp_path / "empty", corpus, "--resume", check=False))
    assert "nothing to resume" in line


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(cli, tmp_path, corpus, parallel):
    """Same global batch (4) on 1 process and on 2 gloo processes x 2: the loss curves agree to 1e-5.
    The FSDP2 run is also stopped half way and resumed, so save/resume is covered under sharding. The
    vocabulary is padded past FUSED_MIN_VOCAB, so the fused head + loss runs under both wrappers."""
    from tinyformer.model.loss import FUSED_MIN_VOCAB

    common = ["train.max_steps=6", "train.eval_every=3", "train.batch_size=4", f"model.vocab_size={FUSED_MIN_VOCAB + 8}"]
    train(cli, tmp_path / "one", corpus, *common)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(*extra: str) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tinyformer",
             "train", *extra, f"run_dir={tmp_path / 'two'}", *data_args(corpus), *TINY_MODEL, *FAST, *common,
             f"train.parallel={parallel}"],
            capture_output=True, text=True, timeout=300, env=env,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    if parallel == "fsdp":
        torchrun("train.stop_at_step=3")
        torchrun("--resume")
    else:
        torchrun()
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [r["step"] for r in one]
    np.testing.assert_allclose([r["train_loss"] for r in two], [r["train_loss"] for r in one], atol=1e-5, rtol=0)
    np.testing.assert_allclose([r["val_loss"] for r in metrics(tmp_path / "two", "eval")],
                               [r["val_loss"] for r in metrics(tmp_path / "one", "eval")], atol=1e-5, rtol=0)
    # consolidated weights: the 2-process checkpoint loads as a plain model with clean names
    from safetensors.torch import load_file

    names = load_file(str(tmp_path / "two" / "checkpoints" / "step-00000006" / "model.safetensors")).keys()
    assert not any("_orig_mod" in n or "module." in n or "_fsdp" in n for n in names)
    from tinyformer.train.rundir import load_model

    a, b = load_model(tmp_path / "one"), load_model(tmp_path / "two")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=name)


def test_early_stopping_and_best_checkpoint(cli, tmp_path, corpus):
    run = tmp_path / "run"
    # lr = 0: the validation loss cannot improve after the first evaluation, so patience 2 stops at step 6
    train(cli, run, corpus, "train.max_steps=50", "train.eval_every=2", "train.lr=0", "train.min_lr=0",
          "train.early_stop_patience=2", "train.keep_last=1")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "early_stopped" and summary["step"] == 6
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert index["best"] == "step-00000002" and index["latest"] == "step-00000006"
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000006"]


def test_gradient_accumulation_matches_the_full_batch(cli, tmp_path, corpus):
    # sequential sampling hands out the same windows whether a step takes them in one or two micro-batches
    common = ["train.max_steps=4", "train.eval_every=0", "data.sampling=sequential", "train.batch_size=4"]
    train(cli, tmp_path / "full", corpus, *common)
    train(cli, tmp_path / "accum", corpus, *common, "train.grad_accum=2")
    full, accum = metrics(tmp_path / "full"), metrics(tmp_path / "accum")
    np.testing.assert_allclose([r["train_loss"] for r in accum], [r["train_loss"] for r in full], atol=1e-5, rtol=0)
    np.testing.assert_allclose([r["grad_norm"] for r in accum], [r["grad_norm"] for r in full], rtol=1e-4)


def test_fine_tuning_starts_from_an_hf_checkpoint(cli, tmp_path, corpus):
    transformers = pytest.importorskip("transformers")
    from tinyformer.train.rundir import load_model

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=256, n_positions=16, n_embd=32,
                                                             n_layer=2, n_head=2)).eval()
    hf.save_pretrained(tmp_path / "hf")
    run = tmp_path / "ft"
    # lr 0: the run's weights must still be exactly the HF model's after its steps
    cli("train", f"run_dir={run}", *data_args(corpus), *FAST, "train.init_from=" + str(tmp_path / "hf"),
        "train.lr=0", "train.min_lr=0", "train.max_steps=2", "model.dropout=0.0", check=True)
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        ours = load_model(run)(ids)[0]
        assert (ours - hf(ids).logits).abs().max().item() < 1e-5
    # the weights fix the shape: a model key that disagrees is refused before any work
    line = one_line_error(cli("train", f"run_dir={tmp_path / 'bad'}", *data_args(corpus), *FAST,
                              "train.init_from=" + str(tmp_path / "hf"), "model.n_layers=4", check=False))
    assert "model.n_layers" in line and "init_from" in line
    assert not (tmp_path / "bad").exists()


REUSE_CHILD = r"""
import resource, sys, torch
from tinyformer.model import Transformer
from tinyformer.model.config import ModelConfig
from tinyformer.train.config import TrainConfig
from tinyformer.train.runtime import setup_runtime
setup_runtime(TrainConfig(device="cpu", reuse_memory=sys.argv[1] == "1"))
torch.manual_seed(0)
model = Transformer(ModelConfig(vocab_size=4096, n_layers=2, n_heads=4, d_model=256, max_seq_len=256))
ids = torch.randint(0, 4096, (16, 256))
def step():
    _, loss = model(ids, targets=ids, return_logits=False)
    loss.backward()
    model.zero_grad(set_to_none=True)
for _ in range(3):  # the heap grows to the step's peak
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                    reason="the allocator setting is glibc's (mallopt)")
def test_cpu_steps_reuse_freed_memory_instead_of_faulting_it_in_again():
    """train.reuse_memory (the default): the memory a training step frees serves the next step; with it off
    glibc gives it back to the OS and every step faults it in again (zero-filled pages)."""
    def faults(reuse: bool) -> float:
        out = subprocess.run([sys.executable, "-c", REUSE_CHILD, "1" if reuse else "0"], capture_output=True,
                             text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    kept, default = faults(True), faults(False)  # page faults per training step (0-3k and 20-45k here)
    assert kept * 5 < default, (kept, default)


def test_an_evaluation_error_on_one_process_fails_on_all_and_training_goes_on(tmp_path, corpus):
    """Under torchrun, a token out of range in the validation windows only process 1 reads (the file changed
    after the run started): both processes treat that evaluation as failed and go on, within 60 s, instead
    of process 0 waiting in the evaluation's all-reduce for one process 1 never joins."""
    import shutil

    from tinyformer.data.tokenfile import read_sidecar, sidecar_path

    val = tmp_path / "val.bin"
    shutil.copy(corpus["val"], val)
    shutil.copy(sidecar_path(corpus["val"]), sidecar_path(val))
    run = tmp_path / "two"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tinyformer",
            "train", f"run_dir={run}", f"data.train={corpus['train']}", f"data.val={val}", f"data.tokenizer={corpus['tok']}",
            *TINY_MODEL, *FAST, "train.max_steps=300", "train.eval_every=20", "train.parallel=ddp",
            "data.eval_tokens=null", "train.sample_tokens=0"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and metrics(run)):
        time.sleep(0.02)
    # micro-batch 2 of 16-token windows: batch 1 (windows 2-3) is process 1's
    itemsize = np.dtype(read_sidecar(val)["dtype"]).itemsize
    with open(val, "r+b") as f:
        f.seek(40 * itemsize)
        f.write(np.array([60000], dtype=read_sidecar(val)["dtype"]).tobytes())
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "evaluation at step" in err and "on process 1 of 2: IndexError" in err, err[-3000:]
    assert metrics(run)[-1]["step"] == 300
