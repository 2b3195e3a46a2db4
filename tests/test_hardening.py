"""Hardening (issue 11): no code runs from a checkpoint, every bad value is a one-line error that creates
nothing, nothing is left half-written, signals give 128 + signal, a resume cannot change the result, a
padded vocabulary samples, a failing evaluation or sampler costs no progress, internal errors say where
their report is. Tiny runs through the CLI's main() in this process."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyformer.data.tokenfile import write_token_file
from tinyformer.tokenizer import Tokenizer

MODEL = ["model.n_layers=1", "model.d_model=16", "model.n_heads=2", "model.max_seq_len=16"]
FAST = ["train.precision=fp32", "train.peak_flops=1e12", "train.threads=1", "train.log_every=1",
        "train.progress=false", "train.batch_size=4", "train.warmup=2", "train.lr=3e-3", "train.sample_tokens=8",
        "model.dropout=0.1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    tok = Tokenizer([], [])
    tok.save(root / "tok")
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran"]
    ids = np.array(tok.encode(" ".join(rng.choice(words, size=3000)) + "."))
    for name, part in (("train", ids[:9000]), ("val", ids[9000:10000]), ("short", ids[:1]), ("empty", ids[:0])):
        write_token_file(root / f"{name}.bin", part, 256, tokenizer_fingerprint=tok.fingerprint, n_bytes=len(part))
    return {"tok": root / "tok", "train": root / "train.bin", "val": root / "val.bin", "short": root / "short.bin",
            "empty": root / "empty.bin"}


def data_args(corpus, val: str = "val") -> list[str]:
    return [f"data.train={corpus['train']}", f"data.val={corpus[val]}", f"data.tokenizer={corpus['tok']}"]


def train(cli, run: Path, corpus, *extra: str, check: bool = True):
    return cli("train", f"run_dir={run}", *data_args(corpus), *MODEL, *FAST, *extra, check=check)


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinyformer: error:"), proc.stderr
    return lines[0]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


def records(run: Path, kind: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_per_s") and k not in ("mfu", "elapsed_s")}
            for r in rows if kind is None or r["kind"] == kind]


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors")


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus):
    """The uninterrupted 8-step run every stopped-and-resumed run must equal bit for bit."""
    from tinyformer.cli import main

    run = tmp_path_factory.mktemp("straight") / "run"
    threads = torch.get_num_threads()
    assert main(["train", f"run_dir={run}", *data_args(corpus), *MODEL, *FAST, "train.max_steps=8",
                 "train.eval_every=4", "train.ckpt_every=2", "train.keep_last=10"]) == 0
    torch.set_num_threads(threads)
    return run


COMMON = ["train.max_steps=8", "train.eval_every=4", "train.ckpt_every=2", "train.keep_last=10"]


# ---------------------------------------------------------------- no code from a checkpoint


class Payload:
    """A pickle that creates a file when unpickled: what a planted trainer_state.pt would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_planted_pickle_never_runs(cli, tmp_path, corpus):
    run = tmp_path / "run"
    train(cli, run, corpus, "train.max_steps=4", "train.stop_at_step=2", "train.eval_every=0")
    ckpt = run / "checkpoints" / "step-00000002"
    marker = tmp_path / "pwned"
    # beside a valid state: resuming reads JSON + safetensors and never touches the pickle
    torch.save({"step": Payload(marker)}, ckpt / "trainer_state.pt")
    train(cli, run, corpus, "train.max_steps=4", "train.eval_every=0")
    assert not marker.exists()
    # disguised as the state files: refused as corrupt, still never unpickled
    run2 = tmp_path / "run2"
    train(cli, run2, corpus, "train.max_steps=4", "train.stop_at_step=2", "train.eval_every=0")
    ckpt2 = run2 / "checkpoints" / "step-00000002"
    torch.save({"step": Payload(marker)}, ckpt2 / "trainer_state.safetensors")
    assert "corrupt" in one_line_error(train(cli, run2, corpus, "train.max_steps=4", "train.eval_every=0", check=False))
    torch.save({"step": Payload(marker)}, ckpt2 / "trainer_state.json")
    assert "corrupt" in one_line_error(train(cli, run2, corpus, "train.max_steps=4", "train.eval_every=0", check=False))
    assert not marker.exists()


# ---------------------------------------------------------------- every bad value: one line, nothing created


BAD_TRAIN = [
    ("train.lr=-1", "train.lr"), ("train.beta2=1.5", "train.beta2"), ("train.grad_accum=0", "train.grad_accum"),
    ("train.threads=-1", "train.threads"), ("train.device=tpu9", "tpu9"), ("train.max_steps=-5", "train.max_steps"),
    ("train.batch_size=0", "train.batch_size"), ("train.batch_size=-3", "train.batch_size"),
    ("train.seq_len=-4", "train.seq_len"), ("train.warmup=-1", "train.warmup"),
    ("train.eval_every=-1", "train.eval_every"), ("train.ckpt_every=-1", "train.ckpt_every"),
    ("train.keep_last=-1", "train.keep_last"), ("train.grad_clip=-1", "train.grad_clip"),
    ("train.lr=.nan", "train.lr"), ("train.seed=-1", "train.seed"), ("train.sdpa_backend=efficient", "CUDA"),
    ("train.sample_temperature=-1", "train.sample_temperature"), ("model.rope_theta=.nan", "model.rope_theta"),
    ("eval.examples=0", "eval.examples"), ("data.eval_tokens=0", "data.eval_tokens"),
]


@pytest.mark.parametrize("override,named", BAD_TRAIN, ids=[b[0] for b in BAD_TRAIN])
def test_a_bad_config_value_is_one_line_and_creates_nothing(cli, tmp_path, corpus, override, named):
    before = tree(tmp_path)
    line = one_line_error(train(cli, tmp_path / "run", corpus, override, check=False))
    assert named in line
    assert tree(tmp_path) == before


@pytest.mark.parametrize("val", ["short", "empty"])
def test_a_validation_file_shorter_than_a_window_is_refused_before_the_first_step(cli, tmp_path, corpus, val):
    line = one_line_error(cli("train", f"run_dir={tmp_path / 'run'}", *data_args(corpus, val), *MODEL, *FAST,
                              check=False))
    assert "data.val" in line and "window" in line
    assert not (tmp_path / "run").exists()


def test_failed_starts_create_nothing(cli, tmp_path, corpus):
    line = one_line_error(train(cli, tmp_path / "run", corpus, "--resume", check=False))
    assert "nothing to resume" in line and not (tmp_path / "run").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"train:\n  lr: \xff\n")
    line = one_line_error(cli("train", "--config", bad, f"run_dir={tmp_path / 'run'}", check=False))
    assert "UTF-8" in line and not (tmp_path / "run").exists()
    source = tmp_path / "input.txt"
    source.write_bytes(b"To be or not\xff\xfe to be")
    line = one_line_error(cli("data", "prepare", "shakespeare", "--source", source, "--out", tmp_path / "sp",
                              check=False))
    assert "UTF-8" in line and not (tmp_path / "sp").exists()
    line = one_line_error(cli("train", "--bogus-flag", check=False))
    assert "--bogus-flag" in line


@pytest.mark.parametrize("index", ["[]", '{"latest": 6}', '{"latest": "../../elsewhere"}', "{not json"])
def test_a_damaged_index_is_one_line_for_train_and_eval(cli, tmp_path, corpus, index):
    run = tmp_path / "run"
    train(cli, run, corpus, "train.max_steps=2", "train.eval_every=0")
    (run / "checkpoints" / "index.json").write_text(index)
    before = tree(tmp_path)
    assert "index.json" in one_line_error(train(cli, run, corpus, "train.max_steps=4", "--resume", check=False))
    assert "index.json" in one_line_error(cli("eval", "--ckpt", run, check=False))
    assert tree(tmp_path) == before


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--seq-len", "0"), ("--max-tokens", "-1")])
def test_eval_refuses_non_positive_sizes(cli, tmp_path, corpus, flag, value):
    run = tmp_path / "run"
    train(cli, run, corpus, "train.max_steps=2", "train.eval_every=0")
    assert flag in one_line_error(cli("eval", "--ckpt", run, flag, value, check=False))  # --max-tokens 0: all


# ---------------------------------------------------------------- nothing half-written, survived


def test_a_torn_metrics_line_and_stray_temp_files_are_survived(cli, tmp_path, corpus, straight):
    run = tmp_path / "run"
    train(cli, run, corpus, *COMMON, "train.stop_at_step=6")
    # what kills leave: a torn last metrics line (past the checkpoint), temp files of every atomic write
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 7, "tokens": 4')
    ckpts = run / "checkpoints"
    stray_dirs = [ckpts / ".step-00000008.k2j3.tmp", ckpts / ".step-00000004.old"]
    stray_files = [ckpts / ".index.json.a1b2.tmp", run / ".summary.json.x9.tmp", run / ".metrics.jsonl.q.tmp",
                   run / ".config.yaml.z.tmp"]
    for path in stray_dirs:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"partial")
    for path in stray_files:
        path.write_text("partial")
    strays = stray_dirs + stray_files
    train(cli, run, corpus, *COMMON)
    assert not any(p.exists() for p in strays)
    assert records(run) == records(straight)  # the torn line is gone and the rest is exact
    assert same_weights(weights(run, 8), weights(straight, 8))


def test_resume_falls_back_to_the_newest_complete_checkpoint_and_says_so(cli, tmp_path, corpus, straight):
    run = tmp_path / "run"
    train(cli, run, corpus, *COMMON, "train.stop_at_step=6")
    (run / "checkpoints" / "step-00000006" / "trainer_state.safetensors").unlink()  # step 6 incomplete
    proc = train(cli, run, corpus, *COMMON)
    assert "index.json names step-00000006" in proc.stderr and "step-00000004" in proc.stderr
    assert records(run) == records(straight) and same_weights(weights(run, 8), weights(straight, 8))
    # index.json gone as well: the same fallback, and the index is rebuilt with the remembered best
    run2 = tmp_path / "run2"
    train(cli, run2, corpus, *COMMON, "train.stop_at_step=6")
    (run2 / "checkpoints" / "index.json").unlink()
    proc = train(cli, run2, corpus, *COMMON)
    assert "index.json is missing" in proc.stderr and "step-00000006" in proc.stderr
    assert records(run2) == records(straight)
    index = json.loads((run2 / "checkpoints" / "index.json").read_text())
    assert index == json.loads((straight / "checkpoints" / "index.json").read_text())


# ---------------------------------------------------------------- signals and resume


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_exits_128_plus_signal_and_resumes_bit_exactly(cli, tmp_path, corpus, straight,
                                                                          monkeypatch, sig):
    from tinyformer.train.trainer import Trainer

    original = Trainer.train_step

    def step_then_signal(self, lr):
        out = original(self, lr)
        if self.step == 2:  # during step 3: the run finishes it, saves step 3 and stops
            os.kill(os.getpid(), sig)
        return out

    run = tmp_path / "run"
    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    proc = train(cli, run, corpus, *COMMON, check=False)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert proc.returncode == 128 + sig, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["step"] == 3 and summary["signal"] == sig.name
    assert (run / "checkpoints" / "step-00000003" / "trainer_state.json").is_file()
    assert train(cli, run, corpus, *COMMON).returncode == 0
    assert records(run) == records(straight) and same_weights(weights(run, 8), weights(straight, 8))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_gives_up_at_once_with_that_signals_exit_code(cli, tmp_path, corpus, monkeypatch, sig):
    """A scheduler that sends SIGTERM twice must still see 143 (not 130, the code of a Ctrl-C)."""
    from tinyformer.train.trainer import Trainer

    original = Trainer.train_step

    def step_then_two_signals(self, lr):
        out = original(self, lr)
        if self.step == 2:
            os.kill(os.getpid(), sig)
            os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_two_signals)
    proc = train(cli, tmp_path / "run", corpus, *COMMON, check=False)
    assert proc.returncode == 128 + sig, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"tinyformer: interrupted ({sig.name})"


def test_a_run_stopped_during_its_evaluation_evaluates_on_resume(cli, tmp_path, corpus, straight, monkeypatch):
    from tinyformer.train.evaluation import LossEvaluation

    original = LossEvaluation.run
    calls = []

    def killed_at_step_4(self, module, runtime):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # a second Ctrl-C (or a kill) in the middle of the evaluation of step 4
        return original(self, module, runtime)

    run = tmp_path / "run"
    monkeypatch.setattr(LossEvaluation, "run", killed_at_step_4)
    assert train(cli, run, corpus, *COMMON, check=False).returncode == 130
    state = json.loads((run / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())["state"]
    assert state["eval_pending"] is True  # the step was saved before its evaluation began
    train(cli, run, corpus, *COMMON)
    assert records(run) == records(straight) and same_weights(weights(run, 8), weights(straight, 8))
    assert json.loads((run / "checkpoints" / "index.json").read_text()) == \
        json.loads((straight / "checkpoints" / "index.json").read_text())


CHANGES = ["train.lr=1e-3", "train.min_lr=1e-5", "train.schedule=linear", "train.warmup=3", "train.seed=7",
           "train.batch_size=8", "train.weight_decay=0", "train.grad_clip=0.5", "data.sampling=sequential",
           "model.dropout=0.0", "train.beta1=0.8"]


@pytest.mark.parametrize("change", CHANGES)
def test_a_resume_that_changes_the_result_is_refused_naming_the_setting(cli, tmp_path, corpus, change):
    run = tmp_path / "run"
    train(cli, run, corpus, *COMMON, "train.stop_at_step=2")
    before = tree(run)
    line = one_line_error(train(cli, run, corpus, *COMMON, change, check=False))
    assert "cannot resume" in line and change.split("=")[0] in line
    assert tree(run) == before


def test_a_resume_on_other_data_is_refused_but_cadence_and_length_may_change(cli, tmp_path, corpus):
    run = tmp_path / "run"
    train(cli, run, corpus, *COMMON, "train.stop_at_step=2")
    other = tmp_path / "other.bin"
    tok = Tokenizer([], [])
    ids = np.array(tok.encode("a different text altogether. " * 200))
    write_token_file(other, ids, 256, tokenizer_fingerprint=tok.fingerprint, n_bytes=len(ids))
    line = one_line_error(train(cli, run, corpus, *COMMON, f"data.val={other}", check=False))
    assert "data.val" in line
    train(cli, run, corpus, "train.max_steps=10", "train.eval_every=5", "train.ckpt_every=0", "train.keep_last=3",
          "train.threads=2", "train.device=cpu", "train.progress=true", "train.log_every=2")
    assert json.loads((run / "summary.json").read_text())["step"] == 10


# ---------------------------------------------------------------- sampling, failures while training


def test_generate_never_draws_an_id_at_or_above_vocab_limit():
    from tinyformer.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=300, n_layers=1, d_model=16, n_heads=2, position="rope")).eval()
    ids = torch.zeros(4, 1, dtype=torch.long)
    free = model.generate(ids, 100, temperature=5.0, seed=0)
    assert int(free.max()) >= 256  # without the limit a near-uniform model does draw padding ids
    for kwargs in ({"temperature": 5.0}, {"temperature": 0.0}, {"temperature": 5.0, "top_k": 290},
                   {"temperature": 5.0, "top_p": 0.99}):
        assert int(model.generate(ids, 100, seed=0, vocab_limit=256, **kwargs).max()) < 256


def test_a_model_with_a_padded_vocabulary_samples(cli, tmp_path, corpus):
    run = tmp_path / "run"
    proc = train(cli, run, corpus, "model.vocab_size=320", "train.max_steps=2", "train.eval_every=1",
                 "train.sample_tokens=64", "train.sample_temperature=50", "train.sample_top_k=null")
    assert "warning" not in proc.stderr and (run / "samples.txt").read_text().count("=== step") == 2
    assert cli("sample", "--ckpt", run, "--temperature", "50", "--max-new-tokens", "15", check=True).stdout


def test_a_failing_sampler_or_evaluation_is_logged_and_costs_no_progress(cli, tmp_path, corpus, monkeypatch):
    import tinyformer.lm.run as lm
    from tinyformer.train.evaluation import LossEvaluation

    def broken_sampler(*args):
        def sample(model, step):
            raise RuntimeError("sampler exploded")

        return sample

    monkeypatch.setattr(lm, "lm_sampler", broken_sampler)
    run = tmp_path / "run"
    proc = train(cli, run, corpus, "train.max_steps=4", "train.eval_every=2")
    assert proc.stderr.count("tinyformer: warning: sampling at step") == 2 and "sampler exploded" in proc.stderr
    assert "sampler exploded" in (run / "errors.log").read_text()
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"

    def broken_eval(self, module, runtime):
        raise RuntimeError("evaluation exploded")

    monkeypatch.setattr(LossEvaluation, "run", broken_eval)
    run = tmp_path / "run2"
    proc = train(cli, run, corpus, "train.max_steps=4", "train.eval_every=2", "train.keep_last=5")
    assert "tinyformer: warning: evaluation at step 2 failed" in proc.stderr
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000004"]
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_an_internal_error_is_one_line_naming_its_report(cli, tmp_path, corpus, monkeypatch):
    import tinyformer.verbs.eval as eval_cli

    run = tmp_path / "run"
    train(cli, run, corpus, "train.max_steps=2", "train.eval_every=0")

    def bug(*args):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(eval_cli, "_eval_lm", bug)
    proc = cli("eval", "--ckpt", run)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinyformer: internal error: ZeroDivisionError: a bug deep inside")
    report = Path(lines[0].split("full report in ")[1].split(";")[0])
    text = report.read_text()
    assert "Traceback" in text and "a bug deep inside" in text and "eval --ckpt" in text
    report.unlink()
