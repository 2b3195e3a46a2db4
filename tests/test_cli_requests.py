"""What `sample`, `eval` and `attention` make of a user's request: answers scored as `eval` scores them,
one prompt syntax, `INPUT = ANSWER` files on language-model runs, the whole validation file on request, and
requests too large to fit refused in one line before anything is allocated."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyformer.data.tokenfile import write_token_file
from tinyformer.model import ModelConfig, Transformer
from tinyformer.model.io import save_model
from tinyformer.tokenizer import train_bpe


@pytest.fixture(scope="module")
def ur_run(tmp_path_factory) -> Path:
    """A real lab run of UR (answer only: one supervised symbol) with RoPE, trained a few steps."""
    from tinyformer.lab.run import train_task
    from tinyformer.lab.sweep import lab_config

    out = tmp_path_factory.mktemp("lab") / "ur"
    train_task(lab_config({"task.name": "UR", "model.position": "rope", "model.n_layers": 1, "model.n_heads": 2,
                           "model.d_model": 16, "train.max_steps": 30, "train.eval_every": 30,
                           "eval.examples": 40, "task.train_lengths": "4-8", "eval.bins": ["5-8"],
                           "train.batch_size": 32, "train.warmup": 2, "train.lr": 3e-3, "train.device": "cpu",
                           "train.progress": False, "train.precision": "fp32", "run_dir": str(out)}))
    return out


ROWS = ["+12+34+46+", "+5+5+01+", "+9+1+01+", "+21+2+41+"]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> tuple[Path, object]:
    """A language-model run laid out as the trainer writes it: character tokenizer, RoPE model, val.bin."""
    root = tmp_path_factory.mktemp("lm")
    text = "\n".join(ROWS * 50) + "\n"
    tok = train_bpe([text], 256 + 1, special_tokens=["<|endoftext|>"], pattern=r"[\s\S]")
    run = root / "run"
    tok.save(run / "tokenizer")
    ids = np.array(tok.encode(text), dtype=np.int64)
    write_token_file(root / "val.bin", ids, tok.vocab_size, tokenizer_fingerprint=tok.fingerprint,
                     n_bytes=len(text))
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("llama", vocab_size=tok.vocab_size, n_layers=1, n_heads=2, d_model=16,
                                           max_seq_len=16))
    save_model(model, run / "checkpoints" / "step-00000001")
    (run / "checkpoints" / "index.json").write_text(json.dumps({"latest": "step-00000001"}))
    return run, tok, root / "val.bin"


def one_line_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("tinyformer: error:") and proc.stderr.count("\n") == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    return proc.stderr


# --- point 3: an answer-only task's answers are one symbol, scored as eval scores them -------------


def test_sample_on_an_answer_only_task_agrees_with_eval_on_the_same_examples(main_cli, ur_run):
    drawn = main_cli("sample", "--ckpt", ur_run, "--num-samples", "40", "--bin", "5-8", check=True).stdout
    lines = drawn.splitlines()
    answers = [line.split(" -> ")[1].split()[0:2] for line in lines[:-1]]
    # UR's answer is one symbol: a second token (the unsupervised position after it) is no part of it
    assert all(len(a) == 1 or a[1] in ("correct", "wrong,") for a in answers), lines[:5]
    right = int(re.match(r"(\d+)/40 correct", lines[-1]).group(1))
    acc = main_cli("eval", "--ckpt", ur_run, "--bins", "5-8", "--examples", "40", "--json", check=True).stdout
    expected = json.loads(acc)["accuracy"]["5-8"] * 40
    assert right == round(expected) and right > 0  # chance alone answers a fifth of UR


def test_a_prompts_file_on_an_answer_only_task_marks_the_models_own_answer_right(main_cli, ur_run, tmp_path):
    line = main_cli("sample", "--ckpt", ur_run, "--prompt", "0 3 1 4 ? 3", check=True).stdout.strip()
    got = line.split(" -> ")[1]
    assert len(got.split()) == 1  # one symbol, as UR answers
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"0 3 1 4 ? 3 = {got}\n")
    out = main_cli("sample", "--ckpt", ur_run, "--prompts-file", prompts, check=True).stdout.splitlines()
    assert out == [f"0 3 1 4 ? 3 -> {got}   correct", "exact match: 1/1 (100.0%)"]


def test_a_task_name_in_the_wrong_case_suggests_the_right_one(main_cli, tmp_path):
    proc = main_cli("lengen", "train", "--task", "ur", "--pe", "rope", "--out", tmp_path / "r")
    one_line_error(proc, "unknown task 'ur'; did you mean 'UR'?")


# --- point 13: attention reads a prompt as sample does ---------------------------------------------


def test_attention_takes_the_prompt_syntax_of_sample(main_cli, ur_run, tmp_path):
    from tinyformer.rundir import Run

    main_cli("attention", "--ckpt", ur_run, "--text", "0 3 1 4 ? 3", "--out", tmp_path / "maps", check=True)
    saved = np.load(tmp_path / "maps" / "attention.npz")
    task = Run(ur_run).task_setup().task
    assert saved["ids"].tolist() == task.prompt_ids("0 3 1 4 ? 3")  # what sample --prompt feeds the model
    assert saved["tokens"].tolist() == ["<bos>", "0", "3", "1", "4", "<sep>", "3"]
    proc = main_cli("attention", "--ckpt", ur_run, "--text", "0 3 9 ? 3", "--out", tmp_path / "bad")
    one_line_error(proc, "9 is not a symbol of task UR")
    assert not (tmp_path / "bad").exists()
