"""Shared fixtures, one factory per kind of thing a test needs:

- `cli`: `tinyformer ARGS` run in this process through tinyformer.cli.main, as the console script runs it
  (returncode / stdout / stderr); `cli_process`: the same in a real `python -m tinyformer` subprocess, for
  what only a process shows (signals from outside, torchrun, a second process, import-time behaviour);
- `one_line_error`: the check that a command failed as a user's mistake must (one line, no traceback);
- `tiny_corpus`, `tiny_model`, `tiny_lm_run`, `tiny_task_run`: a byte-level corpus, a seeded small
  Transformer, and small language-model and lab task runs that take a few seconds to train;
- `shared_data`: the real-text folder ../shared/data (skipped with a reason where absent).

The factories are session-scoped, so a module-scoped fixture can train a run once for all its tests.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Tiny models gain nothing from a second thread, and tests that spawn processes (CLI, DDP) would
# oversubscribe the cores: one thread per process, inherited by every subprocess.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# precision=auto caches its measurements; tests keep theirs out of the user's ~/.cache
os.environ.setdefault("TINYFORMER_CACHE", tempfile.mkdtemp(prefix="tinyformer-test-cache-"))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: the project's tests must pass without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-text folder {SHARED_DATA} is absent (it sits beside the project in CI)")
    return SHARED_DATA


# ---------------------------------------------------------------- running the CLI


@dataclasses.dataclass
class Result:
    """What a finished `tinyformer` command left: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def main_in_process(args) -> int:
    """tinyformer.cli.main(ARGS), keeping torch's thread count (train.threads=1 must not leak into other tests)."""
    import torch

    from tinyformer.cli import main

    threads = torch.get_num_threads()
    try:
        return main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)


def _failed(args, out: str, err: str) -> AssertionError:
    return AssertionError(f"tinyformer {' '.join(map(str, args))} failed:\n{out}\n{err}")


@pytest.fixture(scope="session")
def tinyformer_main():
    """tinyformer_main(args) -> exit code: main() in this process, its output left to pytest's capture; for a
    module-scoped fixture or a loop that reads capsys itself (a test reads a command's output through `cli`)."""
    return main_in_process


@pytest.fixture
def cli(capsys):
    """`tinyformer ARGS` in this process (the console script's entry point, minus the ~3 s of starting Python
    and importing torch per call): cli(*args, check=False) -> Result."""

    def run(*args, check: bool = False) -> Result:
        capsys.readouterr()
        rc = main_in_process(args)
        out, err = capsys.readouterr()
        if check and rc != 0:
            raise _failed(args, out, err)
        return Result(rc, out, err)

    return run


class Process:
    """`python -m tinyformer ARGS` in a subprocess, as a user starts it (PYTHONPATH and the one-thread
    setting carry over)."""

    def command(self, *args) -> list[str]:
        return [sys.executable, "-m", "tinyformer", *map(str, args)]

    def torchrun_command(self, *args, nproc: int = 2) -> list[str]:
        """The same command under `torchrun --standalone` on `nproc` local processes."""
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "tinyformer", *map(str, args)]

    def __call__(self, *args, check: bool = False, torchrun: bool = False, timeout: float = 300,
                 **kwargs) -> subprocess.CompletedProcess:
        """Run to the end; torchrun=True starts it on two processes."""
        cmd = self.torchrun_command(*args) if torchrun else self.command(*args)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and proc.returncode != 0:
            raise _failed(args, proc.stdout, proc.stderr[-3000:])
        return proc

    def popen(self, *args, torchrun: bool = False, **kwargs) -> subprocess.Popen:
        """Start it and return at once (the caller waits for it, or kills it)."""
        kwargs = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **kwargs}
        return subprocess.Popen(self.torchrun_command(*args) if torchrun else self.command(*args), **kwargs)


@pytest.fixture(scope="session")
def cli_process() -> Process:
    """A real `python -m tinyformer` process: only for what an in-process run cannot show."""
    return Process()


def assert_one_line_error(proc, *phrases: str) -> str:
    """A user's mistake: exit code 2, exactly one stderr line `tinyformer: error: ...` naming every phrase,
    no traceback anywhere. Returns the line."""
    assert proc.returncode == 2, f"exit code {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinyformer: error:"), proc.stderr
    for phrase in phrases:
        assert phrase in lines[0], f"{phrase!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="session")
def one_line_error():
    """one_line_error(result, *phrases) -> the error line; fails unless it is one line naming each phrase."""
    return assert_one_line_error


# ---------------------------------------------------------------- tiny data, models and runs


def pseudo_english(n_chars: int = 30_000, seed: int = 0) -> str:
    """Seeded pseudo-English: learnable (loss falls in a few steps) and never the same twice."""
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "see", "big", "red", "sun"]
    out, size = [], 0
    while size < n_chars:
        sentence = " ".join(rng.choice(words, size=rng.integers(3, 9))) + ". "
        out.append(sentence)
        size += len(sentence)
    return "".join(out)[:n_chars]


@dataclasses.dataclass
class Corpus:
    """A byte-level tokenizer (tok/) with train.bin and val.bin token files made from text."""

    root: Path
    tokenizer: object  # tinyformer.tokenizer.Tokenizer

    @property
    def tok(self) -> Path:
        return self.root / "tok"

    @property
    def train(self) -> Path:
        return self.root / "train.bin"

    @property
    def val(self) -> Path:
        return self.root / "val.bin"

    @property
    def args(self) -> list[str]:
        """The data settings of a run on this corpus."""
        return [f"data.train={self.train}", f"data.val={self.val}", f"data.tokenizer={self.tok}"]

    def token_file(self, name: str, text_or_ids) -> Path:
        """Another token file of this tokenizer beside the others (text is encoded, ids are taken as they are)."""
        from tinyformer.data.tokenfile import write_token_file

        ids = np.asarray(self.tokenizer.encode(text_or_ids, allowed_special="all")
                         if isinstance(text_or_ids, str) else text_or_ids)
        path = self.root / f"{name}.bin"
        write_token_file(path, ids, self.tokenizer.vocab_size, tokenizer_fingerprint=self.tokenizer.fingerprint,
                         n_bytes=len(ids))
        return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """tiny_corpus(text=None, *, val_text=None, split=0.9, specials=()) -> Corpus. The default text is 30,000
    characters of pseudo-English; without val_text the last 10% of the tokens are the validation file.
    Made once per session for each set of arguments."""
    from tinyformer.tokenizer import Tokenizer

    made: dict = {}

    def make(text: str | None = None, *, val_text: str | None = None, split: float = 0.9,
             specials: tuple[str, ...] = ()) -> Corpus:
        key = (text, val_text, split, tuple(specials))
        if key not in made:
            tok = Tokenizer([], list(specials))
            corpus = Corpus(tmp_path_factory.mktemp("corpus"), tok)
            tok.save(corpus.tok)
            ids = np.array(tok.encode(pseudo_english() if text is None else text, allowed_special="all"))
            if val_text is None:
                cut = int(len(ids) * split)
                corpus.token_file("train", ids[:cut])
                corpus.token_file("val", ids[cut:])
            else:
                corpus.token_file("train", ids)
                corpus.token_file("val", val_text)
            made[key] = corpus
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_model():
    """tiny_model(position="learned", **config) -> a seeded (torch seed 0) Transformer in eval mode: 2 layers,
    4 heads, d_model 32, 61 tokens, 64 positions unless the config says otherwise."""
    import torch

    from tinyformer.model import ModelConfig, Transformer

    def make(position: str = "learned", **config) -> Transformer:
        torch.manual_seed(0)
        base = dict(vocab_size=61, n_layers=2, n_heads=4, d_model=32, max_seq_len=64, position=position)
        return Transformer(ModelConfig(**{**base, **config})).eval()

    return make


@pytest.fixture(scope="session")
def randomised():
    """randomised(cfg) -> a Transformer of that ModelConfig in eval mode with every weight, norms and biases
    included, random and far from its init (N(0, 0.3); norm gains 1 + that): no wrong weight mapping can hide
    and no near-tie flips a greedy token, while generation stays varied."""
    import torch

    from tinyformer.model import Transformer

    def make(cfg) -> Transformer:
        torch.manual_seed(0)
        model = Transformer(cfg).eval()
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                is_norm_weight = "norm" in name and name.endswith("weight")
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if is_norm_weight else 0.0))
        return model

    return make


class LMRuns:
    """Tiny language-model runs through `tinyformer train` on the default tiny corpus (1 layer, d_model 16,
    dropout 0.1, 16-token windows, float32, batches of 4 on one thread): a few steps take a second."""

    MODEL = ["model.n_layers=1", "model.d_model=16", "model.n_heads=2", "model.max_seq_len=16",
             "model.dropout=0.1"]  # dropout: a resume must also restore the dropout generator
    FAST = ["train.precision=fp32", "train.peak_flops=1e12", "train.threads=1", "train.log_every=1",
            "train.progress=false", "train.batch_size=4", "train.warmup=2", "train.lr=3e-3", "train.sample_tokens=8"]

    def __init__(self, tmp_path_factory, corpus: Corpus) -> None:
        self.tmp_path_factory, self.corpus = tmp_path_factory, corpus

    def args(self, run_dir: Path, *overrides: str, corpus: Corpus | None = None) -> list[str]:
        """The `train` command of a run in run_dir (later overrides win)."""
        return ["train", f"run_dir={run_dir}", *(corpus or self.corpus).args, *self.MODEL, *self.FAST, *overrides]

    def __call__(self, *overrides: str, run_dir: Path | None = None, corpus: Corpus | None = None) -> Path:
        """Train it in this process (its output goes to pytest's capture); returns the run directory."""
        run_dir = run_dir or self.tmp_path_factory.mktemp("lm") / "run"
        rc = main_in_process(self.args(run_dir, *overrides, corpus=corpus))
        assert rc == 0, f"tinyformer {' '.join(map(str, self.args(run_dir, *overrides)))} exited {rc}"
        return run_dir


@pytest.fixture(scope="session")
def tiny_lm_run(tmp_path_factory, tiny_corpus) -> LMRuns:
    """tiny_lm_run(*overrides, run_dir=None, corpus=None) -> run directory; .args(run_dir, *overrides) -> the
    command, for cli(...) where a test reads what the command printed."""
    return LMRuns(tmp_path_factory, tiny_corpus())


@pytest.fixture
def train_lm(cli, tiny_lm_run):
    """train_lm(run_dir, *overrides, check=True, corpus=None) -> Result: that tiny run's `tinyformer train` in this
    process, for a test that reads what it printed or how it failed."""

    def run(run_dir: Path, *overrides: str, check: bool = True, corpus: Corpus | None = None) -> Result:
        return cli(*tiny_lm_run.args(run_dir, *overrides, corpus=corpus), check=check)

    return run


class TaskRuns:
    """Tiny lab runs of a task (UR with RoPE unless told otherwise: 1 layer, d_model 16, 6 steps of 8 rows,
    float32, lengths 1-8, bins 1-8 and 9-16): a second or two each."""

    SETTINGS = {"task.name": "UR", "model.position": "rope", "model.n_layers": 1, "model.n_heads": 2,
                "model.d_model": 16, "train.max_steps": 6, "train.eval_every": 3, "eval.examples": 24,
                "task.train_lengths": "1-8", "eval.bins": ["1-8", "9-16"], "train.batch_size": 8,
                "train.warmup": 2, "train.log_every": 2, "train.device": "cpu", "train.progress": False,
                "train.precision": "fp32", "train.threads": 1,
                "train.peak_flops": 1e12}  # the MFU reference given: measuring it costs seconds (30 s in bf16)

    def __init__(self, tmp_path_factory) -> None:
        self.tmp_path_factory = tmp_path_factory

    def config(self, **settings):
        """The run's RunConfig (the lab preset, then SETTINGS, then these dotted settings)."""
        from tinyformer.lab.sweep import lab_config

        return lab_config({**self.SETTINGS, **settings})

    def args(self, out: Path, *overrides: str) -> list[str]:
        """The `lengen train` command of such a run (UR, RoPE) into out."""
        sizes = [f"{k}={v}" for k, v in self.SETTINGS.items() if k not in ("task.name", "model.position",
                                                                          "eval.bins", "train.progress")]
        return ["lengen", "train", "--task", "UR", "--pe", "rope", "--out", str(out), *sizes,
                "eval.bins=[1-8,9-16]", "train.progress=false", *overrides]

    def __call__(self, run_dir: Path | None = None, **settings) -> dict:
        """Train it in this process; returns its summary (run_dir/summary.json)."""
        import torch

        from tinyformer.lab.run import train_task

        run_dir = run_dir or self.tmp_path_factory.mktemp("task") / "run"
        threads = torch.get_num_threads()
        try:
            return train_task(self.config(run_dir=str(run_dir), **settings))
        finally:
            torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_task_run(tmp_path_factory) -> TaskRuns:
    """tiny_task_run(run_dir=None, **{"dotted.key": value}) -> summary; .config(...) -> the RunConfig;
    .args(out, *overrides) -> the `lengen train` command."""
    return TaskRuns(tmp_path_factory)


TIMING = ("elapsed_s", "mfu")  # measured, so never equal between two processes


def read_records(run: Path, kind: str | None = None, *, timing: bool = True) -> list[dict]:
    import json

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if kind is None or r["kind"] == kind]
    if not timing:
        rows = [{k: v for k, v in r.items() if k not in TIMING and not k.endswith("_per_s")} for r in rows]
    return rows


@pytest.fixture(scope="session")
def records():
    """records(run_dir, kind=None, timing=True) -> the run's metrics.jsonl records (of that kind: "train" or
    "eval"); timing=False leaves out what was measured (elapsed time, throughput, MFU), for a comparison of
    two runs that must be equal bit for bit."""
    return read_records


@pytest.fixture(scope="session")
def fake_task_train():
    """fake_task_train(calls) -> a stand-in for a lab run's training, for sweep, best and report tests: its
    accuracy is a fixed function of the config (layers, lr, seed), and each run is appended to `calls`."""

    def make(calls: list):
        def train(cfg, run_dir: Path) -> dict:
            layers, lr, seed = cfg.model.n_layers, cfg.train.lr, cfg.train.seed
            calls.append((layers, lr, seed))
            score = layers / 10 + (0.05 if lr == 1e-3 else 0.0) + seed / 100
            return {"steps": 10, "stopped_early": False, "train_seconds": 0.1,
                    "accuracy": {"1-50": 1.0, "51-100": score, "101-150": score / 2}}

        return train

    return make
