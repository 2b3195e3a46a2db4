"""lm-evaluation-harness scores of a run (tinyformer.lm.harness, `tinyformer eval --harness`) equal our own
computation of the same quantities: each choice's summed log-probability from our Transformer on our
tokenizer's ids (so the accuracy is our argmax agreement), and our greedy generation's text. Offline: two
local YAML tasks over jsonl files, one multiple-choice (loglikelihood) and one generate_until."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tinyformer.model import ModelConfig
from tinyformer.model.generate import generate
from tinyformer.model.io import save_model

pytest.importorskip("lm_eval", reason="harness tests need lm-eval: pip install 'tinyformer[harness]'")
pytest.importorskip("transformers", reason="the harness loads the export with transformers")

EOT = "<|endoftext|>"
CHOICES = [  # (context, choices, label): trailing spaces and a multi-word choice exercise the harness's split
    ("the cat sat on the", ["mat", "sun", "dog"], 0),
    ("the dog ran to ", ["a", "the big", "red"], 1),
    ("a big red", ["sun", "cat", "on the mat"], 2),
    ("see", ["the cat", "and", "to"], 0),
]
PROMPTS = ["the cat", "a big red sun and", "the dog ran", "mat."]
MAX_GEN = 10


def write_tasks(folder: Path) -> Path:
    """Two harness tasks in its own YAML format, each over a local jsonl file."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "choice.jsonl", "w") as f:
        for ctx, choices, label in CHOICES:
            f.write(json.dumps({"ctx": ctx, "choices": choices, "label": label}) + "\n")
    with open(folder / "gen.jsonl", "w") as f:
        for p in PROMPTS:
            f.write(json.dumps({"prompt": p, "answer": " the"}) + "\n")
    common = "dataset_path: json\ntest_split: test\n"
    (folder / "tiny_choice.yaml").write_text(
        f"task: tiny_choice\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'choice.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{ctx}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (folder / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'gen.jsonl'}\n"
        "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\ntarget_delimiter: ''\n"
        f"generation_kwargs:\n  until: ['.']\n  max_gen_toks: {MAX_GEN}\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    return folder


def run_of(model, tokenizer, folder: Path) -> Path:
    """A run directory holding `model` as its one checkpoint and `tokenizer` as its tokenizer."""
    save_model(model, folder / "checkpoints" / "step-00000010")
    (folder / "checkpoints" / "index.json").write_text(json.dumps({"latest": "step-00000010", "best": None}))
    tokenizer.save(folder / "tokenizer")
    return folder


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_corpus, randomised):
    """A GPT-2-shaped run with random weights far from init (varied greedy text), scored on both tasks."""
    from tinyformer.lm import harness
    from tinyformer.train.rundir import Run

    tok = tiny_corpus(specials=(EOT,)).tokenizer
    cfg = ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layers=2, n_heads=2, d_model=32, max_seq_len=64)
    root = tmp_path_factory.mktemp("harness")
    run = Run(run_of(randomised(cfg), tok, root / "run"))
    model = run.load_model()
    result = harness.evaluate(run, model, ["tiny_choice", "tiny_gen"], include=str(write_tasks(root / "tasks")),
                              log_samples=True)
    return model, tok, result, root


def our_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """The continuation's summed log-probability, tokenized as the harness does for a causal model: trailing
    spaces of the context move to the continuation, the two are encoded together and split after the
    context's own tokens; no BOS."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok.encode(context + continuation)
    n_ctx = len(tok.encode(context))
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]]))[0][0].double()
    logp = logits.log_softmax(-1)
    return sum(logp[i - 1, whole[i]].item() for i in range(n_ctx, len(whole)))


def test_choice_loglikelihoods_and_accuracy_equal_ours(scored):
    model, tok, result, _ = scored
    samples = sorted(result["samples"]["tiny_choice"], key=lambda s: s["doc_id"])
    assert len(samples) == len(CHOICES)
    right = 0
    for sample, (ctx, choices, label) in zip(samples, CHOICES):
        theirs = [float(r[0]) for r in sample["filtered_resps"]]
        ours = [our_loglikelihood(model, tok, ctx, " " + c) for c in choices]
        assert theirs == pytest.approx(ours, abs=1e-4), ctx
        assert len(set(round(x, 3) for x in ours)) == len(ours)  # no tie decides the accuracy
        right += max(range(len(ours)), key=ours.__getitem__) == label
    assert result["results"]["tiny_choice"]["acc,none"] == pytest.approx(right / len(CHOICES))


def test_generations_equal_our_greedy_text(scored):
    model, tok, result, _ = scored
    samples = sorted(result["samples"]["tiny_gen"], key=lambda s: s["doc_id"])
    texts = []
    for sample, prompt in zip(samples, PROMPTS):
        ids = torch.tensor([tok.encode(prompt)])
        out = generate(model, ids, MAX_GEN, temperature=0, stop_tokens=[tok.eot_id])[0, ids.shape[1]:].tolist()
        if tok.eot_id in out:
            out = out[: out.index(tok.eot_id)]
        ours = tok.decode(out).split(".")[0]  # the task's `until`
        assert sample["filtered_resps"][0] == ours, prompt
        texts.append(ours)
    assert len(set(texts)) > 1 and any(t.strip() for t in texts)  # varied text, not one degenerate answer


def test_cli_prints_a_table_and_writes_the_results_in_the_run(cli, tiny_lm_run, tiny_corpus, tmp_path):
    corpus = tiny_corpus(specials=(EOT,))
    run = tiny_lm_run("model.max_seq_len=64", "train.seq_len=16", "train.max_steps=2", corpus=corpus)
    tasks = write_tasks(tmp_path / "tasks")
    res = cli("eval", "--ckpt", run, "--harness", "tiny_choice", "--harness-include", tasks, "--limit", "2",
              check=True)
    path = run / "harness" / "tiny_choice.json"
    saved = json.loads(path.read_text())
    acc = saved["results"]["tiny_choice"]["acc,none"]
    assert saved["n-samples"]["tiny_choice"]["effective"] == 2 and "samples" not in saved
    assert re.search(rf"^tiny_choice\s+acc\s+{acc:.4f}\s+\d", res.stdout, re.M) and str(path) in res.stdout
    assert not list(path.parent.glob(".*.tmp"))


def test_cli_refusals_are_one_line(cli, one_line_error, tiny_lm_run, tiny_task_run, tmp_path, scored, tiny_corpus):
    model, _, _, root = scored
    tasks = root / "tasks"
    # a tokenizer without <|endoftext|> (a character-level run's): the harness would fail inside its tokenizer
    no_eot = run_of(model, tiny_corpus().tokenizer, tmp_path / "no-eot")
    one_line_error(cli("eval", "--ckpt", no_eot, "--harness", "tiny_choice", "--harness-include", tasks),
                   "has no <|endoftext|> token", "data prepare text")
    assert not (no_eot / "harness").exists()
    fire = tiny_lm_run("model.position=fire", "train.max_steps=1")
    one_line_error(cli("eval", "--ckpt", fire, "--harness", "tiny_choice", "--harness-include", tasks),
                   "position='fire' has no HF equivalent")
    task_run = tmp_path / "task"
    tiny_task_run(task_run)
    one_line_error(cli("eval", "--ckpt", task_run, "--harness", "tiny_choice", "--harness-include", tasks),
                   "is a task run")
    run = root / "run"
    one_line_error(cli("eval", "--ckpt", run, "--harness", "tiny_choise", "--harness-include", tasks),
                   "unknown harness task 'tiny_choise'", "tiny_choice")
    one_line_error(cli("eval", "--ckpt", run, "--harness", "tiny_choice", "--harness-include", tmp_path / "no"),
                   "is not a directory")
    one_line_error(cli("eval", "--ckpt", run, "--harness", "tiny_choice", "--limit", "x"), "--limit must be")
    assert not (fire / "harness").exists() and not (run / "harness").exists()
