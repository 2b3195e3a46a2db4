"""Training batches cut into groups of rows of similar length (`tinyformer.batch.split_by_length`): the parts
give the whole batch's loss and gradients while computing fewer positions, and a lab run trained in parts
follows the run trained on whole batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tinyformer.batch import IGNORE_INDEX, MIN_GROUP_ROWS, split_by_length
from tinyformer.model import ModelConfig, Transformer
from tinyformer.model.loss import FUSED_MIN_VOCAB
from tinyformer.model.transformer import target_counts


def lab_batch(task: str = "UR", position: str = "learned", rows: int = 64) -> tuple[dict, ModelConfig]:
    """A real training batch of a lab task (lengths 1-20) and the lab model's config for it."""
    from tinyformer.lab.run import resolve_task_run
    from tinyformer.lab.sweep import lab_config

    cfg, setup = resolve_task_run(lab_config({"task.name": task, "model.position": position,
                                              "task.train_lengths": "1-20", "model.n_layers": 2,
                                              "model.n_heads": 2, "model.d_model": 32}))
    return setup.stream(rows).next_batch(), cfg.model


def loss_and_grads(model: Transformer, parts: list[dict], counts=None) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    total = torch.zeros(())
    for part in parts:
        extra = {k: part[k] for k in ("position_ids", "attention_mask") if k in part}
        _, loss = model(part["ids"], part["targets"], return_logits=False, target_counts=counts, **extra)
        loss.backward()
        total += loss.detach()
    return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_training_signal(model: Transformer, batch: dict, max_groups: int = 4) -> list[dict]:
    parts = split_by_length(batch, max_groups)
    counts = target_counts(batch["targets"], model.config.n_predict)
    whole_loss, whole_grads = loss_and_grads(model, [batch])
    part_loss, part_grads = loss_and_grads(model, parts, counts)
    assert part_loss.item() == pytest.approx(whole_loss.item(), rel=1e-5)
    assert whole_grads.keys() == part_grads.keys()
    for name, g in whole_grads.items():
        torch.testing.assert_close(part_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    return parts


@pytest.mark.parametrize("task,position", [("UR", "learned"), ("UF", "rope"), ("majority", "alibi"),
                                           ("add", "abacus")])
def test_the_parts_of_a_lab_batch_give_its_loss_and_gradients_with_fewer_positions(task, position):
    batch, model_cfg = lab_batch(task, position)
    torch.manual_seed(0)
    parts = assert_same_training_signal(Transformer(model_cfg), batch)
    assert len(parts) > 1
    assert sum(p["ids"].numel() for p in parts) < 0.8 * batch["ids"].numel()


def test_several_heads_and_the_fused_head_give_the_same_signal_in_parts():
    # next-token heads 1-3 (multi-token prediction) and a vocabulary large enough for the fused head+loss
    gen = torch.Generator().manual_seed(3)
    vocab = FUSED_MIN_VOCAB + 11
    ids = torch.randint(0, vocab, (40, 24), generator=gen)
    targets = torch.randint(0, vocab, (40, 24), generator=gen)
    need = torch.randint(0, 25, (40,), generator=gen)  # row i's targets end after column need[i]; 0: none
    targets[torch.arange(24)[None, :] >= need[:, None]] = IGNORE_INDEX
    targets[:, :3] = IGNORE_INDEX  # an unsupervised prompt, as in the lab's tasks
    for n_predict in (1, 3):
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=vocab, n_layers=2, n_heads=2, d_model=32, max_seq_len=32,
                                        n_predict=n_predict))
        parts = assert_same_training_signal(model, {"ids": ids, "targets": targets})
        assert len(parts) > 1


def test_how_a_batch_is_cut():
    gen = torch.Generator().manual_seed(5)
    targets = torch.randint(0, 9, (48, 30), generator=gen)
    need = torch.randint(0, 31, (48,), generator=gen)
    need[:3] = 0  # three rows with nothing to predict
    targets[torch.arange(30)[None, :] >= need[:, None]] = IGNORE_INDEX
    batch = {"ids": torch.arange(48)[:, None].expand(48, 30), "targets": targets, "position_ids": torch.arange(30)}
    parts = split_by_length(batch, 4)
    rows = [int(r) for p in parts for r in p["ids"][:, 0]]
    # every row with a target in exactly one part, none of the others
    assert sorted(rows) == [r for r in range(48) if need[r] > 0]
    for p in parts:
        mine = need[p["ids"][:, 0]]
        assert p["targets"].shape[1] == int(mine.max())  # cut after its own longest row
        assert p["position_ids"].tolist() == list(range(int(mine.max())))
        assert len(p["ids"]) >= MIN_GROUP_ROWS
    # groups hold rows of similar length: each group's rows are no longer than the next group's
    assert all(need[a["ids"][:, 0]].max() <= need[b["ids"][:, 0]].min() for a, b in zip(parts, parts[1:]))
    one = split_by_length(batch, 1)
    assert len(one) == 1 and one[0]["targets"].shape[1] == int(need.max())
    assert one[0]["ids"][:, 0].tolist() == [r for r in range(48) if need[r] > 0]  # the batch's own order


def test_a_language_model_batch_is_left_whole():
    ids = torch.randint(0, 50, (16, 32))
    batch = {"ids": ids, "targets": torch.roll(ids, -1, 1)}
    assert split_by_length(batch, 4) == [batch] and split_by_length(batch, 4)[0] is batch
    nothing = {"ids": ids, "targets": torch.full_like(ids, IGNORE_INDEX)}
    assert split_by_length(nothing, 4)[0] is nothing


def test_a_lab_run_trained_in_groups_follows_the_run_in_one_group(tmp_path: Path, monkeypatch):
    from tinyformer.lab.run import train_task
    from tinyformer.lab.sweep import lab_config
    from tinyformer.train import runtime

    settings = {"task.name": "UR", "model.position": "learned", "model.n_layers": 2, "model.n_heads": 2,
                "model.d_model": 32, "task.train_lengths": "1-16", "eval.bins": ["1-16"], "eval.examples": 32,
                "train.batch_size": 64, "train.max_steps": 12, "train.eval_every": 12, "train.log_every": 1,
                "train.warmup": 2, "train.progress": False, "train.precision": "fp32", "eval.stop_accuracy": 2.0}

    def losses(name: str) -> list[float]:
        train_task(lab_config({**settings, "run_dir": str(tmp_path / name)}))
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r["train_loss"] for r in rows if r["kind"] == "train"]

    grouped = losses("grouped")
    monkeypatch.setattr(runtime, "CPU_LENGTH_GROUPS", 1)  # one group: only the trailing padding cut
    whole = losses("whole")
    assert len(grouped) == len(whole) == 12
    assert grouped == pytest.approx(whole, rel=1e-4)  # the same losses, summed in another order
