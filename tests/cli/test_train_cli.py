"""`tinyformer train` of a language model end to end: what a run directory holds and how its numbers are
checked independently, early stopping and the best checkpoint, gradient accumulation, fine-tuning from a
Hugging Face checkpoint, sampling during training (a padded vocabulary included), a failing sampler or
evaluation that costs no progress, Abacus positions on text and one row per sequence (data.sampling=rows)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

# the model of test_run_directory_metrics_and_eval: large enough that 12 steps lower the loss by 0.5
TWO_LAYERS = ["model.n_layers=2", "model.d_model=32", "model.dropout=0.0"]


def test_run_directory_metrics_and_eval(cli, train_lm, tiny_corpus, tmp_path, records):
    from tinyformer.data.tokenfile import read_token_file
    from tinyformer.model import ModelConfig, Transformer
    from tinyformer.train.rundir import load_model
    from tinyformer.train.schedule import lr_at

    flops_per_token = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=2, max_seq_len=16)).flops_per_token(16)
    run = tmp_path / "run"
    train_lm(run, *TWO_LAYERS, "train.max_steps=12", "train.eval_every=6", "train.keep_last=1")
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "samples.txt", "plots/curves.png",
                 "tokenizer/tokenizer.json", "checkpoints/index.json"):
        assert (run / name).exists(), name
    trained = records(run, "train")
    assert [r["tokens"] for r in trained] == [4 * 16 * s for s in range(1, 13)]
    for r in trained:
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, schedule="cosine", lr=3e-3, min_lr=3e-4,
                                              warmup=2, total=12))
        assert r["grad_norm"] > 0 and r["tokens_per_s"] > 0
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * flops_per_token / 1e12)
    assert trained[-1]["train_loss"] < trained[0]["train_loss"] - 0.5
    evals = records(run, "eval")
    assert [e["step"] for e in evals] == [6, 12]

    # the last eval covers the whole validation file: recompute it independently with the saved model
    model = load_model(run, "latest")
    tokens = torch.from_numpy(np.asarray(read_token_file(tiny_corpus().val)[0], dtype=np.int64))
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

    train_lm(tmp_path / "other", "train.max_steps=3", "train.eval_every=0")
    png = tmp_path / "both.png"
    cli("plot", run, tmp_path / "other", "--out", png, check=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_early_stopping_and_best_checkpoint(train_lm, tmp_path):
    run = tmp_path / "run"
    # lr = 0: the validation loss cannot improve after the first evaluation, so patience 2 stops at step 6
    train_lm(run, "train.max_steps=50", "train.eval_every=2", "train.lr=0", "train.min_lr=0",
          "train.early_stop_patience=2", "train.keep_last=1")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "early_stopped" and summary["step"] == 6
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert index["best"] == "step-00000002" and index["latest"] == "step-00000006"
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000006"]


def test_gradient_accumulation_matches_the_full_batch(train_lm, tmp_path, records):
    # sequential sampling hands out the same windows whether a step takes them in one or two micro-batches
    common = ["train.max_steps=4", "train.eval_every=0", "data.sampling=sequential", "train.batch_size=4"]
    train_lm(tmp_path / "full", *common, "model.dropout=0.0")
    train_lm(tmp_path / "accum", *common, "model.dropout=0.0", "train.grad_accum=2")
    full, accum = records(tmp_path / "full", "train"), records(tmp_path / "accum", "train")
    np.testing.assert_allclose([r["train_loss"] for r in accum], [r["train_loss"] for r in full], atol=1e-5, rtol=0)
    np.testing.assert_allclose([r["grad_norm"] for r in accum], [r["grad_norm"] for r in full], rtol=1e-4)


def test_fine_tuning_starts_from_an_hf_checkpoint(cli, tiny_corpus, tiny_lm_run, tmp_path, one_line_error):
    transformers = pytest.importorskip("transformers")
    from tinyformer.train.rundir import load_model

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=256, n_positions=16, n_embd=32,
                                                             n_layer=2, n_head=2)).eval()
    hf.save_pretrained(tmp_path / "hf")
    run = tmp_path / "ft"
    settings = [*tiny_corpus().args, *tiny_lm_run.FAST, "train.init_from=" + str(tmp_path / "hf")]  # no model.*
    # lr 0: the run's weights must still be exactly the HF model's after its steps
    cli("train", f"run_dir={run}", *settings, "train.lr=0", "train.min_lr=0", "train.max_steps=2", "model.dropout=0.0", check=True)
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        ours = load_model(run)(ids)[0]
        assert (ours - hf(ids).logits).abs().max().item() < 1e-5
    # the weights fix the shape: a model key that disagrees is refused before any work
    one_line_error(cli("train", f"run_dir={tmp_path / 'bad'}", *settings, "model.n_layers=4"),
                   "model.n_layers", "init_from")
    assert not (tmp_path / "bad").exists()


def test_a_model_with_a_padded_vocabulary_samples(cli, train_lm, tmp_path):
    run = tmp_path / "run"
    proc = train_lm(run, "model.vocab_size=320", "train.max_steps=2", "train.eval_every=1", "train.sample_tokens=64",
                    "train.sample_temperature=50", "train.sample_top_k=null")
    assert "warning" not in proc.stderr and (run / "samples.txt").read_text().count("=== step") == 2
    assert cli("sample", "--ckpt", run, "--temperature", "50", "--max-new-tokens", "15", check=True).stdout


def test_a_failing_sampler_or_evaluation_is_logged_and_costs_no_progress(train_lm, tmp_path, monkeypatch):
    import tinyformer.lm.run as lm
    from tinyformer.train.evaluation import LossEvaluation

    def broken_sampler(*args):
        def sample(model, step):
            raise RuntimeError("sampler exploded")

        return sample

    monkeypatch.setattr(lm, "lm_sampler", broken_sampler)
    run = tmp_path / "run"
    proc = train_lm(run, "train.max_steps=4", "train.eval_every=2")
    assert proc.stderr.count("tinyformer: warning: sampling at step") == 2 and "sampler exploded" in proc.stderr
    assert "sampler exploded" in (run / "errors.log").read_text()
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"

    def broken_eval(self, module, runtime):
        raise RuntimeError("evaluation exploded")

    monkeypatch.setattr(LossEvaluation, "run", broken_eval)
    run = tmp_path / "run2"
    proc = train_lm(run, "train.max_steps=4", "train.eval_every=2", "train.keep_last=5")
    assert "tinyformer: warning: evaluation at step 2 failed" in proc.stderr
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000004"]
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("position", ["abacus", "coupled-relative"])  # the same digit indices on text
def test_digit_index_positions_train_evaluate_sample_and_resume_exactly_on_text(cli, train_lm, tiny_corpus, tmp_path,
                                                                                records, position):
    rng = np.random.default_rng(0)
    sums = tiny_corpus("".join(f"{a}+{b}={a + b}\n" for a, b in rng.integers(0, 5000, size=(400, 2))), split=0.8,
                       specials=("<|endoftext|>",))
    abacus = [f"model.position={position}", "model.d_model=32", "model.max_seq_len=32", "model.dropout=0.0",
              "train.warmup=1", "train.sample_tokens=6", "train.max_steps=6", "train.eval_every=3"]
    run = tmp_path / "run"
    train_lm(run, *abacus, corpus=sums)
    evals = records(run, "eval")
    assert [r["step"] for r in evals] == [3, 6] and all(np.isfinite(r["val_loss"]) for r in evals)
    assert "=== step 6 ===" in (run / "samples.txt").read_text()
    # eval reproduces the logged validation loss (the same Abacus ids, the same windows)
    out = json.loads(cli("eval", "--ckpt", run, "--json", check=True).stdout)
    assert out["loss"] == pytest.approx(evals[-1]["val_loss"], abs=1e-6)
    proc = cli("sample", "--ckpt", run, "--prompt", "12+34=", "--max-new-tokens", "4", "--temperature", "0",
               check=True)
    assert proc.stdout.startswith("12+34=")
    # stopped at step 3 and resumed: the same run, bit for bit (the offsets' counter is in the checkpoint)
    paused = tmp_path / "paused"
    train_lm(paused, *abacus, "train.stop_at_step=3", corpus=sums)
    train_lm(paused, *abacus, corpus=sums)
    assert records(paused, timing=False) == records(run, timing=False)


def test_a_rows_run_trains_and_eval_reproduces_its_loss(cli, train_lm, tiny_corpus, tmp_path, records,
                                                        one_line_error):
    text = "".join(f"+{a}+{b}+{a + b}+\n" for a, b in np.random.default_rng(0).integers(0, 99, (300, 2)))
    rows = tiny_corpus(text, val_text=text, specials=("<|endoftext|>",))
    run = tmp_path / "run"
    train_lm(run, "data.sampling=rows", "model.position=abacus", "model.d_model=32", "train.max_steps=4",
             "train.warmup=1", "train.sample_tokens=0", "data.eval_tokens=500", corpus=rows)
    logged = records(run, "eval")[-1]
    out = json.loads(cli("eval", "--ckpt", run, "--json", check=True).stdout)
    assert out["loss"] == logged["val_loss"] and out["tokens"] == logged["val_tokens"]
    one_line_error(cli("eval", "--ckpt", run, "--seq-len", "16,32"), "--seq-len does not apply")
