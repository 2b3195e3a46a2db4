"""A coupled-position run (learned table, and relative bias) under every verb: `sample` with a natural prompt answers with the model's own
continuation under coupled ids, `eval` and `attention` read the run, and HF export refuses in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tinyformer.tasks import get_task
from tinyformer.train.rundir import Run

TINY = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "train.batch_size=16", "train.threads=1",
        "train.precision=fp32", "train.progress=false", "eval.examples=40", "train.peak_flops=1e12", "train.warmup=2"]


@pytest.fixture(scope="module", params=["coupled", "coupled-relative"])
def coupled_run(request, tmp_path_factory, tinyformer_main) -> Path:
    run = tmp_path_factory.mktemp("coupled") / "add"
    assert tinyformer_main(["lengen", "train", "--task", "add", "--pe", request.param, "task.train_lengths=1-3",
                            "eval.bins=[1-3,4-6]", *TINY, "--steps", "120", "train.lr=3e-3", "eval.stop_accuracy=1.01",
                            "--out", str(run)]) == 0
    return run


def reversed_addition_ids(tokens: list[int], plus: int) -> list[int]:
    """Coupled ids of `+A+B+C...` written out here from the rule (every digit, operand or answer, gets its
    place + 2; the answer's opening `+` holds the place below the units, 1), independently of the task's
    vectorized code."""
    out, number, place = [], 0, 0
    for tok in tokens:
        if tok == plus:
            number, place = number + 1, 0
            out.append(1 if number == 3 else 0)
        else:
            out.append(place + 2)
            place += 1
    return out


def test_sample_answers_a_natural_prompt_with_its_greedy_continuation_under_coupled_ids(cli, coupled_run):
    line = cli("sample", "--ckpt", coupled_run, "--prompt", "1342+879", check=True).stdout.rstrip("\n")
    prompt, arrow, answer = line.partition(" -> ")
    assert prompt == "1342+879" and arrow and answer.isdigit()
    run = Run(coupled_run)
    task, model = get_task(run.config.task.name), run.load_model()
    ids = task.encode("+2431+978+")  # reversed digits
    for _ in range(6):  # greedy, each step on the whole sequence with the ids computed above
        pos = torch.tensor([reversed_addition_ids(ids, task.plus)])
        with torch.no_grad():
            logits, _ = model(torch.tensor([ids]), position_ids=pos)
        ids.append(int(logits[0, -1, : task.vocab_size].argmax()))
        if ids[-1] == task.plus:
            break
    digits = "".join(task.vocab[i] for i in ids[len("+2431+978+"):] if i < 10)
    assert answer == (digits[::-1].lstrip("0") or ("0" if digits else ""))


def test_eval_and_attention_read_a_coupled_run(cli, coupled_run, tmp_path):
    import json

    out = json.loads(cli("eval", "--ckpt", coupled_run, "--json", check=True).stdout)
    assert set(out["accuracy"]) == {"1-3", "4-6"} and all(0 <= v <= 1 for v in out["accuracy"].values())
    cli("attention", "--ckpt", coupled_run, "--text", "+21+3+42+", "--out", tmp_path / "maps", check=True)
    pngs = sorted((tmp_path / "maps").glob("*.png"))
    assert pngs and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_export_refuses_a_coupled_model_in_one_line(cli, one_line_error, coupled_run, tmp_path):
    one_line_error(cli("export", "--ckpt", coupled_run, "--format", "hf", "--out", tmp_path / "hf"),
                   f"position='{Run(coupled_run).config.model.position}' has no HF equivalent")
    assert not (tmp_path / "hf").exists()


def test_a_coupled_table_on_text_is_refused_in_one_line_naming_abacus(train_lm, one_line_error, tmp_path):
    # on text the coupled ids are the digit indices, which a table reads exactly as abacus does: refused before
    # the run directory exists (coupled-relative on text trains: tests/cli/test_train_cli.py)
    one_line_error(train_lm(tmp_path / "lm", "model.position=coupled", check=False),
                   "model.position=coupled on text", "use abacus", "model.position=coupled-relative")
    assert not (tmp_path / "lm").exists()


def test_coupled_relative_copies_three_times_the_training_length(tinyformer_main, tmp_path):
    """What the scheme is for: trained on copies of 1-5 symbols only, a 1-layer model copies 11-15 symbols
    exactly (the clipped id difference is all it reads, so nothing it learned depends on the length)."""
    import json

    run = tmp_path / "nf"
    assert tinyformer_main(["lengen", "train", "--task", "NF", "--pe", "coupled-relative", "model.n_layers=1",
                            "model.n_heads=2", "model.d_model=32", "train.lr=3e-3", "train.warmup=20",
                            "train.batch_size=32", "--steps", "800", "task.train_lengths=1-5", "eval.bins=[1-5,11-15]",
                            "eval.examples=100", "train.eval_every=800", "eval.stop_accuracy=1.01", "train.threads=1",
                            "train.progress=false", "--out", str(run)]) == 0
    accuracy = json.loads((run / "summary.json").read_text())["accuracy"]
    assert accuracy["1-5"] == 1.0 and accuracy["11-15"] >= 0.95
