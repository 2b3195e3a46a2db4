"""Fuzz (issue 11): random config values and random corruptions of real run directories (a language model
and a lab task run) fed to `train`, `eval`, `sample` and `export`. Whatever the input: exit code 0 or 2,
on failure one stderr line (`tinyformer: error: ...`) and no new file, never a traceback.

A seeded generator with a fixed number of cases, in this process through the CLI's main(); a failing case
prints its seed, its corruption and its command, so it can be replayed alone (FUZZ_CASE=N).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import sys
import typing
from pathlib import Path

import pytest

from tinyformer.model.config import ModelConfig
from tinyformer.train.config import DataConfig, TrainConfig

SEED = 20261130
CASES = int(os.environ.get("FUZZ_CASES", "40"))  # ~12 s; the slow test runs 300 more
# keys the fuzz leaves alone: compile needs a C compiler and minutes; a tracker would start wandb or trackio
SKIP_KEYS = {"train.compile", "train.loggers"}
INTS = [-7, -1, 0, 1, 2, 3, 64]  # config values: small enough that any model they make fits in memory
ARG_INTS = [*INTS, 1000]  # command-line sizes: also beyond a position table
FLOATS = [-1.0, 0.0, 1e-3, 0.5, 0.99, 1.0, 1.5, float("nan"), float("inf")]
JUNK = ["", "abc", "[1, 2]", "{a: 1}", "null", "true", "-", "é\u200b", "1e400", "../../x"]


@pytest.fixture(scope="module")
def runs(tiny_lm_run, tiny_task_run, tiny_corpus, tinyformer_main, tmp_path_factory) -> dict[str, Path]:
    """A language-model run and a task run, each paused half way (so train resumes them)."""
    common = ["train.max_steps=4", "train.stop_at_step=2", "train.eval_every=2"]
    lm = tiny_lm_run(*common, "model.dropout=0.0", "train.sample_tokens=4")
    task = tmp_path_factory.mktemp("fuzz") / "task"
    assert tinyformer_main(tiny_task_run.args(task, *common, "eval.bins=[1-8,9-12]", "eval.examples=8",
                                              "train.batch_size=4", "train.log_every=1")) == 0
    return {"lm": lm, "task": task, "val": tiny_corpus().val}


# ---------------------------------------------------------------- random values


def value_for(tp, rng: random.Random):
    """A random value for a field of type `tp`: mostly plausible (valid ones included), sometimes junk."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if rng.random() < 0.15:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if rng.random() < 0.15:
        return rng.choice(JUNK)
    if origin is typing.Literal:
        return rng.choice([*args, "bogus"])
    if tp is bool:
        return rng.choice([True, False, "maybe"])
    if tp is int:
        return rng.choice(INTS)
    if tp is float:
        return rng.choice(FLOATS + INTS)
    if origin is list:
        return rng.choice([["1-3"], [], ["9-2"], ["1-4", "5-6"], [3]])
    return rng.choice(JUNK)


def random_overrides(rng: random.Random, kind: str) -> list[str]:
    sections = [("train", TrainConfig), ("model", ModelConfig), ("data" if kind == "lm" else "eval", DataConfig)]
    if kind == "task":
        from tinyformer.train.config import EvalConfig

        sections[2] = ("eval", EvalConfig)
    out = []
    for _ in range(rng.choice([0, 1, 1, 2])):
        section, cls = rng.choice(sections)
        hints = typing.get_type_hints(cls)
        name = rng.choice([f.name for f in dataclasses.fields(cls) if f.init])
        key = f"{section}.{name}"
        if key in SKIP_KEYS:
            continue
        value = value_for(hints[name], rng)
        text = json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)
        out.append(f"{key}={'null' if value is None else text}")
    if rng.random() < 0.05:
        out.append(rng.choice(["resume=never", "resume=must", "resume=bogus", "nosuchsection.x=1", "train=3"]))
    return out


# ---------------------------------------------------------------- random corruptions


def _files(run: Path) -> list[Path]:
    return sorted(p for p in run.rglob("*") if p.is_file())


def _mutate_json(path: Path, rng: random.Random) -> str:
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return "not json"
    node, where = data, []
    while isinstance(node, (dict, list)) and node:
        key = rng.choice(sorted(node) if isinstance(node, dict) else range(len(node)))
        where.append(key)
        if not isinstance(node[key], (dict, list)) or not node[key] or rng.random() < 0.1:
            node[key] = rng.choice([*INTS, *FLOATS[:-2], *JUNK, None, [], {}, True, 2**70])
            break
        node = node[key]
    path.write_text(json.dumps(data))
    return "/".join(map(str, where))


def corrupt(run: Path, rng: random.Random) -> str:
    """One random damage to the run directory; returns what was done."""
    files = _files(run) or [run / "config.yaml"]
    kind = rng.choice(["truncate", "garbage", "delete", "json", "json", "json", "index", "strays", "metrics",
                       "rmdir", "none"])
    path = rng.choice(files)
    name = str(path.relative_to(run))
    if not path.exists():
        return "nothing left"
    if kind == "truncate":
        size = path.stat().st_size
        cut = rng.randrange(0, max(size, 1))
        with open(path, "r+b") as f:
            f.truncate(cut)
        return f"truncate {name} to {cut}"
    if kind == "garbage":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 7, 300]))))
        return f"garbage {name}"
    if kind == "delete":
        path.unlink()
        return f"delete {name}"
    if kind == "json":
        jsons = [p for p in files if p.suffix == ".json"]
        if not jsons:
            return "no json left"
        path = rng.choice(jsons)
        return f"mutate {path.relative_to(run)} at {_mutate_json(path, rng)}"
    if kind == "index":
        index = run / "checkpoints" / "index.json"
        value = rng.choice(["[]", '{"latest": 6}', '{"best": "step-99999999"}', '{"latest": "step-00000001"}', "",
                            '{"latest": "step-00000002", "best_score": "x"}', "{}", "\xff"])
        if not index.parent.is_dir():
            return "no checkpoints/ for an index"
        index.write_bytes(value.encode("latin-1"))
        return f"index.json = {value!r}"
    if kind == "strays":
        (run / "checkpoints" / ".step-00000003.abc.tmp").mkdir(parents=True, exist_ok=True)
        (run / "checkpoints" / ".index.json.x.tmp").write_text("{")
        (run / ".summary.json.y.tmp").write_text("")
        return "stray temp files"
    if kind == "metrics":
        with open(run / "metrics.jsonl", "ab") as f:
            f.write(rng.choice([b'{"kind": "tr', b"\xff\xfe\n", b"[]\n", b'{"step": "x"}\n', b"\n\n"]))
        return "torn metrics line"
    if kind == "rmdir":
        dirs = [p for p in run.rglob("*") if p.is_dir()]
        if not dirs:
            return "no directory left"
        victim = rng.choice(dirs)
        shutil.rmtree(victim)
        return f"rmdir {victim.relative_to(run)}"
    return "no damage"


# ---------------------------------------------------------------- random commands


def command(rng: random.Random, run: Path, kind: str, case: Path, val: Path, odd: float) -> list[str]:
    """A random command on `run`; `odd` is the chance of each unusual argument (0: the plain command)."""
    verb = rng.choice(["train", "train", "eval", "sample", "export"])
    if verb == "train":
        base = ["lengen", "train", "--out", str(run)] if kind == "task" and rng.random() < 0.5 else \
            ["train", "--config", str(run / "config.yaml"), f"run_dir={run}"]
        return [*base, "train.max_steps=3", "train.progress=false", *(random_overrides(rng, kind) if odd else [])]
    args = [verb, "--ckpt", str(rng.choice([run, run / "checkpoints", run / "checkpoints" / "step-00000002",
                                            case / "missing"]) if rng.random() < odd else run)]
    if rng.random() < odd:
        args += ["--which", rng.choice(["best", "latest", "bogus"])]
    if rng.random() < odd * 0.6:
        args += ["--device", rng.choice(["cpu", "cuda", "tpu9", "mps", "cuda:7"])]
    pick = lambda *xs: str(rng.choice(xs))  # noqa: E731
    if verb == "eval":
        for flag, values in (("--batch-size", ARG_INTS), ("--seq-len", ARG_INTS), ("--max-tokens", ARG_INTS),
                             ("--examples", INTS), ("--bins", ["1-2", "3-1", "x", "1-300", ""]),
                             ("--data", [val, case / "none.bin", run / "config.yaml"]),
                             ("--precision", ["fp32", "bf16", "fp16"])):
            if rng.random() < odd * 0.8:
                args += [flag, pick(*values)]
        if rng.random() < 0.2:
            args.append("--greedy")
    elif verb == "sample":
        for flag, values in (("--max-new-tokens", ARG_INTS), ("--temperature", FLOATS), ("--top-k", ARG_INTS),
                             ("--top-p", FLOATS), ("--seed", INTS), ("--num-samples", [1, 2, 0, -1]),
                             ("--prompt", ["the cat", "", "é\u200b<|endoftext|>", "0 1 2", "zzz"]),
                             ("--bin", ["1-2", "2-1", "x", "1-500"])):
            if rng.random() < odd * 0.8:
                args += [flag, pick(*values)]
    else:
        args += ["--out", str(rng.choice([case / "export", case / "deep" / "er" / "export", run])
                              if rng.random() < odd else case / "export")]
        if rng.random() < odd:
            args.append("--force")
    return args


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def fuzz(cases: range, runs: dict[str, Path], tmp_path: Path, capsys, main) -> None:
    """Run each case; fail listing every case that broke the rule, each with what replays it."""
    only = os.environ.get("FUZZ_CASE")
    failures = []
    for i in cases:
        if only is not None and i != int(only):
            continue
        rng = random.Random(SEED * 1000 + i)
        kind = rng.choice(["lm", "task"])
        case = tmp_path / f"case{i}"
        run = case / "run"
        shutil.copytree(runs[kind], run)
        # half the cases damage the run and run a plain command, half run random values on a sound run
        damaged = rng.random() < 0.5
        damage = [corrupt(run, rng) for _ in range(rng.choice([1, 1, 2]) if damaged else 0)]
        args = command(rng, run, kind, case, runs["val"], odd=0.05 if damaged else 0.3)
        before = snapshot(case)
        capsys.readouterr()
        try:
            rc = main(args)
        except BaseException as exc:  # noqa: BLE001 - anything escaping main() is a finding
            rc = f"raised {type(exc).__name__}: {exc}"
        out, err = capsys.readouterr()
        problems = []
        if rc not in (0, 2):
            problems.append(f"exit code {rc}")
        if "Traceback" in err or "Traceback" in out:
            problems.append("a traceback")
        if rc == 2:
            lines = [line for line in err.strip().splitlines() if not line.startswith("tinyformer: warning:")]
            if len(lines) != 1 or not lines[0].startswith("tinyformer: error:"):
                problems.append("stderr is not one error line")
            new = sorted(snapshot(case) - before)
            if new and "diverged" not in err:  # a run that diverged after starting keeps what it wrote
                problems.append(f"created {new[:4]}")
        if os.environ.get("FUZZ_VERBOSE"):
            print(f"case {i} {kind} rc={rc} {damage} {' '.join(args[:2])} :: {err.strip()[:160]}", file=sys.__stderr__)
        if problems:
            failures.append(f"case {i} ({kind}; {'; '.join(damage) or 'no damage'}): tinyformer {' '.join(args)}"
                            f"\n  -> {', '.join(problems)}\n  stderr: {err.strip()[-1500:]}")
        shutil.rmtree(case, ignore_errors=True)
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)


def test_random_values_and_corruptions_give_exit_0_or_2_one_line_and_no_new_files(runs, tmp_path, capsys,
                                                                                         tinyformer_main):
    fuzz(range(CASES), runs, tmp_path, capsys, tinyformer_main)


@pytest.mark.slow
def test_300_more_random_cases(runs, tmp_path, capsys, tinyformer_main):
    """More of the same (the default run keeps the first CASES)."""
    fuzz(range(CASES, CASES + 300), runs, tmp_path, capsys, tinyformer_main)
