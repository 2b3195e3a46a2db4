"""Runs on two processes under torchrun (gloo, CPU): DDP and FSDP2 follow the one-process run of the same global
batch, for a language model and a lab task, through a stop and a resume; an evaluation that fails on one
process fails on all and training goes on."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch

NO_DROPOUT = "model.dropout=0.0"  # each process draws its own dropout masks: the curves agree only without


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(cli_process, tiny_lm_run, tmp_path, records, parallel):
    """Same global batch (4) on 1 process and on 2 gloo processes x 2: the loss curves agree to 1e-5.
    The FSDP2 run is also stopped half way and resumed, so save/resume is covered under sharding. The
    vocabulary is padded past FUSED_MIN_VOCAB, so the fused head + loss runs under both wrappers."""
    from safetensors.torch import load_file

    from tinyformer.model.loss import FUSED_MIN_VOCAB
    from tinyformer.train.rundir import load_model

    common = ["train.max_steps=6", "train.eval_every=3", "train.batch_size=4", f"model.vocab_size={FUSED_MIN_VOCAB + 8}",
              NO_DROPOUT]
    tiny_lm_run(*common, run_dir=tmp_path / "one")
    two = tmp_path / "two"
    if parallel == "fsdp":
        cli_process(*tiny_lm_run.args(two, *common, "train.parallel=fsdp", "train.stop_at_step=3"), torchrun=True,
                    check=True)
        cli_process(*tiny_lm_run.args(two, *common, "train.parallel=fsdp"), "--resume", torchrun=True, check=True)
    else:
        cli_process(*tiny_lm_run.args(two, *common, "train.parallel=ddp"), torchrun=True, check=True)
    one = tmp_path / "one"
    assert [r["step"] for r in records(two, "train")] == [r["step"] for r in records(one, "train")]
    for kind, key in (("train", "train_loss"), ("eval", "val_loss")):
        np.testing.assert_allclose([r[key] for r in records(two, kind)], [r[key] for r in records(one, kind)],
                                   atol=1e-5, rtol=0)
    # consolidated weights: the 2-process checkpoint loads as a plain model with clean names
    names = load_file(str(two / "checkpoints" / "step-00000006" / "model.safetensors")).keys()
    assert not any("_orig_mod" in n or "module." in n or "_fsdp" in n for n in names)
    for (name, p), q in zip(load_model(one).state_dict().items(), load_model(two).state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=name)


def test_a_task_run_on_two_processes_matches_one(cli, cli_process, tiny_task_run, tmp_path, records):
    # the engine's DDP reaches lab runs: each process keeps its rows of one global batch, so 2 gloo
    # processes with batch 32 in all follow the 1-process curve (16 rows each: every process trains its
    # rows in two length groups, the first without gradient sync, `tinyformer.batch.split_by_length`)
    settings = ["train.max_steps=4", "train.eval_every=2", "eval.examples=12", "train.log_every=1", "eval.bins=[1-8]",
                "train.batch_size=32"]
    cli(*tiny_task_run.args(tmp_path / "one", *settings), check=True)
    cli_process(*tiny_task_run.args(tmp_path / "two", *settings, "train.parallel=ddp"), torchrun=True, check=True)
    losses = [[r["train_loss"] for r in records(tmp_path / k, "train")] for k in ("one", "two")]
    assert len(losses[0]) == 4
    np.testing.assert_allclose(losses[1], losses[0], atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2


def test_an_evaluation_error_on_one_process_fails_on_all_and_training_goes_on(cli_process, tiny_lm_run,
                                                                              tiny_corpus, tmp_path, records):
    """Under torchrun, a token out of range in the validation windows only process 1 reads (the file changed
    after the run started): both processes treat that evaluation as failed and go on, within 60 s, instead
    of process 0 waiting in the evaluation's all-reduce for one process 1 never joins."""
    from tinyformer.data.tokenfile import read_sidecar, sidecar_path

    val = tmp_path / "val.bin"
    shutil.copy(tiny_corpus().val, val)
    shutil.copy(sidecar_path(tiny_corpus().val), sidecar_path(val))
    run = tmp_path / "two"
    proc = cli_process.popen(*tiny_lm_run.args(run, f"data.val={val}", "train.max_steps=120", "train.eval_every=20",
                                               "train.parallel=ddp", "data.eval_tokens=null", "train.sample_tokens=0"),
                             torchrun=True)
    deadline = time.time() + 60
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and records(run, "train")):
        time.sleep(0.02)
    # micro-batch 2 of 16-token windows: batch 1 (windows 2-3) is process 1's
    dtype = read_sidecar(val)["dtype"]
    with open(val, "r+b") as f:
        f.seek(40 * np.dtype(dtype).itemsize)
        f.write(np.array([60000], dtype=dtype).tobytes())
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "evaluation at step" in err and "on process 1 of 2: IndexError" in err, err[-3000:]
    assert records(run, "train")[-1]["step"] == 120
