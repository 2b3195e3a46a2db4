"""Checkpoints (tinyformer.train.checkpoint): the last k and the best are kept, and a failed write leaves the
latest one intact."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyformer.errors import TinyformerError


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
