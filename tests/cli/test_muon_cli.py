"""`tinyformer train train.optimizer=muon`: a tiny run learns; a run stopped and resumed equals the straight run
bit for bit; 2 DDP processes follow 1; a resume that changes the optimizer or its settings, and Muon under
FSDP, are refused in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

MUON = ["train.optimizer=muon", "train.muon_lr=0.02"]
COMMON = [*MUON, "train.max_steps=8", "train.eval_every=4", "train.ckpt_every=2", "train.keep_last=10"]


def weights(run, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors")


@pytest.fixture(scope="module")
def straight(tiny_lm_run):
    return tiny_lm_run(*COMMON)


def test_a_muon_run_learns(tiny_lm_run, records):
    run = tiny_lm_run(*MUON, "train.max_steps=30", "train.eval_every=10", "train.warmup=3")
    losses = [r["val_loss"] for r in records(run, "eval")]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.3, losses
    # the weights it saved moved away from the AdamW run's: Muon trained the matrices
    adamw = tiny_lm_run("train.max_steps=30", "train.eval_every=10", "train.warmup=3")
    name = "layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(weights(run, 30)[name], weights(adamw, 30)[name], atol=1e-3)


def test_a_lab_task_run_trains_with_muon(tiny_task_run, records, tmp_path):
    summary = tiny_task_run(tmp_path / "run", **{"train.optimizer": "muon", "train.max_steps": 8})
    assert summary["status"] == "finished" and summary["step"] == 8
    losses = [r["train_loss"] for r in records(tmp_path / "run", "train")]
    assert losses[-1] < losses[0], losses


def test_a_muon_run_stopped_half_way_and_resumed_equals_the_straight_run(train_lm, tmp_path, records, straight):
    split = tmp_path / "split"
    train_lm(split, *COMMON, "train.stop_at_step=3")
    train_lm(split, *COMMON, "--resume")
    assert [r["step"] for r in records(split, "train")] == list(range(1, 9))
    assert records(split, timing=False) == records(straight, timing=False)
    mine, theirs = weights(split, 8), weights(straight, 8)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_a_resume_that_changes_the_optimizer_or_its_settings_is_refused(train_lm, tiny_lm_run, tmp_path,
                                                                      one_line_error):
    adamw = tiny_lm_run(*COMMON[2:], "train.stop_at_step=2")
    one_line_error(train_lm(adamw, *COMMON, check=False), "cannot resume", "train.optimizer was 'adamw'", "'muon'")
    muon = tmp_path / "muon"
    train_lm(muon, *COMMON, "train.stop_at_step=2")
    for change in ("train.optimizer=adamw", "train.muon_lr=0.01", "train.muon_momentum=0.9"):
        one_line_error(train_lm(muon, *COMMON, change, check=False), "cannot resume", change.split("=")[0])
    # an AdamW checkpoint from before train.optimizer (and the model switches) existed resumes as the AdamW run it was
    old = tmp_path / "old"
    shutil.copytree(adamw, old)
    state_file = next((old / "checkpoints").glob("step-*")) / "trainer_state.json"
    document = json.loads(state_file.read_text())
    assert document["state"]["settings"].pop("train.optimizer") == "adamw"
    for key in ("model.qk_norm", "model.logit_softcap", "model.zero_init_proj"):  # the switches came later too
        document["state"]["settings"].pop(key)
    state_file.write_text(json.dumps(document))
    train_lm(old, *COMMON[2:])
    assert json.loads((old / "summary.json").read_text())["step"] == 8


def test_muon_under_fsdp_is_refused_in_one_line(train_lm, tmp_path, one_line_error):
    one_line_error(train_lm(tmp_path / "run", *COMMON, "train.parallel=fsdp", check=False),
                   "train.optimizer=muon", "use parallel=ddp or optimizer=adamw")
    assert not (tmp_path / "run").exists()


def test_two_ddp_processes_match_one(cli_process, tiny_lm_run, tmp_path, records):
    """The same global batch on 1 process and on 2 gloo processes: the curves agree to 1e-5 (as AdamW's do,
    tests/cli/test_distributed.py), and so do the weights."""
    from tinyformer.train.rundir import load_model

    common = [*MUON, "train.max_steps=6", "train.eval_every=3", "train.batch_size=4", "model.dropout=0.0"]
    one, two = tiny_lm_run(*common, run_dir=tmp_path / "one"), tmp_path / "two"
    cli_process(*tiny_lm_run.args(two, *common, "train.parallel=ddp"), torchrun=True, check=True)
    assert [r["step"] for r in records(two, "train")] == list(range(1, 7))
    for kind, key in (("train", "train_loss"), ("eval", "val_loss")):
        np.testing.assert_allclose([r[key] for r in records(two, kind)], [r[key] for r in records(one, kind)],
                                   atol=1e-5, rtol=0)
    for (name, p), q in zip(load_model(one).state_dict().items(), load_model(two).state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=name)


def test_a_diverging_muon_run_names_a_lower_muon_lr_too(train_lm, tmp_path, one_line_error):
    diverging = [*MUON, "train.lr=1e4", "train.muon_lr=1e4", "train.eval_every=1", "train.ckpt_every=1",
                 "train.max_steps=20"]
    one_line_error(train_lm(tmp_path / "run", *diverging, check=False), "training diverged", "train.lr=1000",
                   "train.muon_lr=1000")
