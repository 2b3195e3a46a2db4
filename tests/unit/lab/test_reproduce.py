"""The published length-generalization protocol: the reference task variants, the two architectures, the
schedules, the executor and the resumable `lengen reproduce`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyformer.errors import TinyformerError
from tinyformer.lab import reproduce
from tinyformer.lab.executor import LocalExecutor
from tinyformer.lab.run import train_task
from tinyformer.lab.setup import TaskSetup
from tinyformer.tasks import get_task

TINY = {"model.n_layers": 1, "model.d_model": 16, "model.n_heads": 2, "model.d_ff": 64, "train.max_steps": 6,
        "train.eval_every": 3, "eval.examples": 12, "train.progress": False, "train.threads": 1,
        "train.peak_flops": 1e12}


def rows_of(ex):
    for tokens, n in zip(ex.tokens, ex.lengths):
        n = int(n)
        yield tokens[1 : n + 1], tokens[n + 2], tokens[n + 3]  # context, query, answer


def test_reference_nlfirst_keeps_index_0_and_answers_the_last_context_token():
    ex = get_task("NLFirst-ref").sample(np.random.default_rng(3), 4, 30, 2000)
    wrapped = 0
    for context, query, answer in rows_of(ex):
        first = int(np.flatnonzero(context == query)[0])
        if first == 0:
            wrapped += 1
            assert answer == context[-1]
        else:
            assert answer == context[first - 1]
    assert 0.15 < wrapped / len(ex) < 0.5  # about a quarter of the examples, as in the reference
    # the clean task never keeps such an example
    for context, query, _ in rows_of(get_task("NLFirst").sample(np.random.default_rng(3), 4, 30, 500)):
        assert np.flatnonzero(context == query)[0] > 0


def test_reference_redraws_change_the_length():
    task = get_task("NRLast-ref")
    first_len, last_len = task.check_range(4, 12)
    rng = np.random.default_rng(11)
    ex = task.sample(np.random.default_rng(11), 4, 12, 3000)
    drawn = rng.integers(first_len, last_len + 1, size=3000)  # the lengths drawn before any rejection
    changed = ex.lengths != drawn
    assert changed.any(), "rejected samples were redrawn with a new length"
    for context, query, answer in rows_of(ex):
        last = int(np.flatnonzero(context == query)[-1])
        assert last + 1 < len(context) and answer == context[last + 1]
    # the clean variant redraws at the same length: its lengths are exactly the ones drawn
    clean = get_task("NRLast").sample(np.random.default_rng(11), 4, 12, 3000)
    np.testing.assert_array_equal(clean.lengths, drawn)


def test_the_preset_builds_the_two_published_architectures():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from tinyformer.model import Transformer

    jobs = {j.scheme: j for j in reproduce.plan("full", "unused", rows=["UR"], seeds=[0])}
    ape = TaskSetup(jobs["ape"].cfg).model_config()
    rope = TaskSetup(jobs["rope"].cfg).model_config()
    vocab = get_task("UR").vocab_size
    assert (ape.norm, ape.mlp, ape.bias, ape.tie_embeddings, ape.position_table_size) == (
        "layernorm", "gelu_tanh", True, True, 154)
    assert (rope.norm, rope.norm_eps, rope.mlp, rope.ffn_dim, rope.bias, rope.tie_embeddings) == (
        "rmsnorm", 1e-6, "swiglu", 1024, False, False)
    assert (rope.rope_theta, rope.rope_scaling, rope.scale_residual_init) == (500, 64, False)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=154, n_embd=256, n_layer=4, n_head=4,
                                      bos_token_id=0, eos_token_id=0,
                                      activation_function="gelu_new"))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=1024,
                                         num_hidden_layers=4, num_attention_heads=4, rms_norm_eps=1e-6,
                                         tie_word_embeddings=False, rope_theta=500.0))
    assert Transformer(ape).num_params() == sum(p.numel() for p in gpt2.parameters())
    assert Transformer(rope).num_params() == sum(p.numel() for p in llama.parameters())
    torch.manual_seed(0)
    o_proj = Transformer(rope).layers[0].self_attn.o_proj.weight
    assert o_proj.std().item() == pytest.approx(0.02, rel=0.05)  # plain N(0, 0.02): no residual scaling


def test_the_schedules_linear_to_zero_for_ape_constant_for_rope():
    from tinyformer.train.schedule import lr_at

    jobs = {j.scheme: j.cfg.train for j in reproduce.plan("full", "unused", rows=["UL"], seeds=[0])}
    for scheme, want in (("ape", [1e-4, 5e-5, 1e-4 / 30000, 0.0]), ("rope", [1e-4, 1e-4, 1e-4, 1e-4])):
        t = jobs[scheme]
        got = [lr_at(s, schedule=t.schedule, lr=t.lr, min_lr=t.final_lr, warmup=t.warmup, total=t.max_steps)
               for s in (0, 15000, 29999, 30000)]
        assert got == pytest.approx(want, abs=1e-12), scheme
    assert {(t.beta1, t.beta2, t.eps, t.weight_decay, t.grad_clip, t.batch_size) for t in jobs.values()} == {
        (0.9, 0.999, 1e-8, 0.01, 1.0, 64)}
    uf = {j.scheme: j.cfg.train.lr for j in reproduce.plan("full", "unused", rows=["UF"], seeds=[0])}
    assert uf == {"ape": 1e-3, "rope": 1e-4}


def test_the_seed_changes_the_initialisation_only():
    a, b = (j.cfg for j in reproduce.plan("full", "unused", rows=["UR"], schemes=["ape"], seeds=[0, 1]))
    sa, sb = TaskSetup(a).stream(4), TaskSetup(b).stream(4)
    assert torch.equal(sa.next_batch()["ids"], sb.next_batch()["ids"])
    assert a.train.seed != b.train.seed


def test_the_executor_gives_what_one_run_after_another_gives(tmp_path):
    jobs = reproduce.plan("cpu", tmp_path, rows=["UR"], seeds=[0], overrides=TINY)  # ape and rope: 2 runs
    cfgs = [j.cfg for j in jobs]
    one_by_one = dict(LocalExecutor(0).map(train_task, cfgs))
    for cfg in cfgs:  # fresh directories for the parallel pass
        Path(cfg.run_dir).rename(Path(cfg.run_dir).with_name(Path(cfg.run_dir).name + "-serial"))
    parallel = dict(LocalExecutor(2).map(train_task, cfgs))
    assert len(parallel) == 2
    for i in range(2):
        assert parallel[i]["accuracy"] == one_by_one[i]["accuracy"]
        assert parallel[i]["train_loss"] == one_by_one[i]["train_loss"]


def test_an_interrupted_reproduction_resumes_and_equals_a_straight_one(tmp_path):
    quiet = lambda line: None  # noqa: E731
    kw = {"rows": ["UF"], "schemes": ["rope"], "seeds": [0]}
    straight = reproduce.reproduce("cpu", tmp_path / "a", LocalExecutor(0), overrides=TINY, log=quiet, **kw)
    paused = reproduce.reproduce("cpu", tmp_path / "b", LocalExecutor(0),
                                 overrides={**TINY, "train.stop_at_step": 3}, log=quiet, **kw)
    assert paused[0]["status"] == "paused" and paused[0]["steps"] == 3
    resumed = reproduce.reproduce("cpu", tmp_path / "b", LocalExecutor(0), overrides=TINY, log=quiet, **kw)
    assert resumed[0]["steps"] == 6 and resumed[0]["accuracy"] == straight[0]["accuracy"]
    again = reproduce.reproduce("cpu", tmp_path / "b", LocalExecutor(0), overrides=TINY, log=quiet, **kw)
    assert again == resumed  # finished runs are read back
    paths = reproduce.write(tmp_path / "b", reproduce.aggregate(resumed, "cpu"), "cpu",
                            {"UF": {"rope": {"51-100": 0.222, "101-150": 0.0}}})
    md = paths["markdown"].read_text()
    assert re.search(r"\| UF \| rope \| 11-20 \(~51-100\) \| [01]\.\d{3} \(n=1\) \| .* \| 0\.222 \|", md), md
    assert paths["heatmap"].read_bytes()[:4] == b"\x89PNG"


def test_plan_refuses_what_the_protocol_does_not_define():
    with pytest.raises(TinyformerError, match="defines no scheme 'nope'"):
        reproduce.plan("cpu", "x", schemes=["nope"])


@pytest.mark.slow  # starting Ray takes 15-30 s; test_the_executor_gives_what_one_run_after_another_gives checks the local pool
def test_ray_runs_the_same_runs_with_the_same_results(tmp_path):
    # one Ray task per run on a local Ray instance started here: results equal to the local executor's
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'tinyformer[ray]'")
    from tinyformer.lab.executor import RayExecutor

    jobs = reproduce.plan("cpu", tmp_path / "local", rows=["UL"], schemes=["ape"], seeds=[0, 1], overrides=TINY)
    local = dict(LocalExecutor(0).map(train_task, [j.cfg for j in jobs]))
    jobs = reproduce.plan("cpu", tmp_path / "ray", rows=["UL"], schemes=["ape"], seeds=[0, 1], overrides=TINY)
    import signal

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        remote = dict(RayExecutor().map(train_task, [j.cfg for j in jobs]))
    finally:
        ray.shutdown()
        for sig, handler in handlers.items():  # Ray installs its own; later tests must not inherit them
            signal.signal(sig, handler)
    assert sorted(remote) == [0, 1]
    for i in (0, 1):
        assert remote[i]["accuracy"] == local[i]["accuracy"] and remote[i]["train_loss"] == local[i]["train_loss"]
    assert all((Path(j.cfg.run_dir) / "summary.json").is_file() for j in jobs)
