"""A run as a folder ready to publish on the Hugging Face Hub: HF weights and config, the tokenizer with its
pad/eos tokens and the context the model was trained for, and a model card (README.md) written from the run
itself: architecture, training data and budget, metrics, how to load it. `push` uploads that folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tinyformer.data.tokenfile import read_token_file
from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_dir, check_output
from tinyformer.model.hf import write_hf
from tinyformer.model.hf_config import ARCHITECTURES, hf_family
from tinyformer.tasks import get_task
from tinyformer.tokenizer.export import pad_token, to_hf
from tinyformer.train.metrics import read_metrics


def context_length(run, model) -> int:
    """The longest input the exported model is meant for: a learned table's size, else the training context."""
    cfg = model.config
    if cfg.scheme.limits_context:
        return cfg.position_table_size
    trained = run.config.train.seq_len if run.config is not None else None
    return int(trained or cfg.max_seq_len)


def check_text_run(run, model, readers: str) -> None:
    """Refuse, in one line, a run that `readers` (the harness, the interpretability libraries) cannot read
    through its HF export: a task run, no HF twin (the export's own refusal), no tokenizer."""
    if run.kind == "task":
        raise TinyformerError(f"{run.name} is a task run: its ids are task symbols, not text, which {readers} "
                              "read (use `tinyformer eval --ckpt RUN` for its accuracy per length bin)")
    hf_family(model.config)  # Abacus, coupled, FIRE, qk_norm ...
    if run.tokenizer() is None:
        raise TinyformerError(f"{run.path or run.checkpoint} has no tokenizer; {readers} need one to read text")


def export_run(run, model, out: str | os.PathLike, force: bool = False, repo: str | None = None) -> Path:
    """Write `run` (a `rundir.Run`, its `model` loaded) as an HF folder with a model card, atomically;
    `repo`: the Hub name the card's loading example uses (default: the run's name)."""
    hf_family(model.config)  # refuse before touching the output
    check_output(out, force)
    tokenizer = run.tokenizer()
    eos = tokenizer.eot_id if tokenizer is not None else None
    pad = pad_token(tokenizer) if tokenizer is not None else None
    max_length = context_length(run, model)
    with atomic_dir(out, force=force) as tmp:
        write_hf(model, tmp, bos_token_id=eos, eos_token_id=eos)
        config_path = tmp / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["pad_token_id"] = tokenizer.special_tokens[pad] if pad is not None else None
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            to_hf(tokenizer, tmp, model_max_length=max_length)
        card = model_card(run, model, max_length, repo or str(out))
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return Path(out)


def _metrics_at(run, step: int) -> dict[str, Any]:
    """The evaluation logged at the exported checkpoint's step (else the run's last one)."""
    evals = [r for r in read_metrics(run.path) if r.get("kind") == "eval"] if run.path is not None else []
    at = [r for r in evals if r.get("step") == step]
    return (at or evals or [{}])[-1]


def _count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def model_card(run, model, max_length: int, repo: str | None = None) -> str:
    """README.md of the export: YAML front matter for the Hub, then what a reader needs to judge and use it.
    `repo`: what `from_pretrained` loads it as (a Hub name or the export's path)."""
    cfg = model.config
    family = hf_family(cfg)
    arch = ARCHITECTURES[family]
    name = repo or run.name
    title = Path(name).name
    summary = run.summary() if run.path is not None else {}
    step = int(run.checkpoint.name.split("-")[-1]) if run.checkpoint.name.startswith("step-") else None
    metrics = _metrics_at(run, step) if step is not None else {}
    rcfg = run.config
    task = rcfg is not None and rcfg.kind == "task"
    tags = ["tinyformer", family, "from-scratch"] + (["synthetic-task"] if task else [])
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             "tags:", *(f"- {t}" for t in tags), "---", "", f"# {title}", "",
             f"A {_count(model.num_params())}-parameter decoder-only Transformer trained from scratch with "
             f"tinyformer (run `{run.name}`), exported as `{arch}`"
             + (f" from checkpoint `{run.checkpoint.name}`." if step is not None else "."), ""]
    lines += ["## Architecture", "", "| | |", "|---|---|",
              f"| parameters | {model.num_params():,} ({model.num_params(embeddings=False):,} without embeddings) |",
              f"| layers x heads x width | {cfg.n_layers} x {cfg.n_heads} x {cfg.d_model} (key/value heads "
              f"{cfg.num_kv_heads}, MLP {cfg.ffn_dim}) |",
              f"| positions | {cfg.position}" + (f" (theta {cfg.rope_theta:g})" if cfg.scheme.rotates else "") + " |",
              f"| norm, MLP | {cfg.norm}, {cfg.mlp} |",
              f"| vocabulary | {cfg.vocab_size} |",
              f"| context | {max_length} tokens (`model_max_length`) |", ""]
    lines += ["## Training data and budget", ""]
    if task:
        t = rcfg.task
        lines += [f"- synthetic task `{t.name}`, lengths {t.train_lengths}; evaluated on length bins "
                  f"{', '.join(rcfg.eval.bins)} ({rcfg.eval.examples} examples each)"]
    elif rcfg is not None and rcfg.data is not None:
        lines += _data_lines(rcfg.data)
    if rcfg is not None:
        tc = rcfg.train
        lines += [f"- {summary.get('step', '?')} steps of {tc.batch_size} sequences"
                  + (f" x {tc.seq_len or cfg.max_seq_len} tokens" if not task else "")
                  + (f" = {summary['tokens']:,} tokens" if summary.get("tokens") else ""),
                  f"- AdamW lr {tc.lr:g} ({tc.schedule}, warmup {tc.warmup}, final {tc.final_lr:g}), weight decay "
                  f"{tc.weight_decay:g}, betas ({tc.beta1:g}, {tc.beta2:g}), grad clip {tc.grad_clip:g}, seed {tc.seed}"]
    if summary.get("device"):
        seconds = summary.get("elapsed_s") or 0
        took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else \
            f"{seconds / 3600:.1f} h"
        lines += [f"- {summary.get('precision', '?')} on {summary['device']}"
                  + (f" x {summary['world_size']}" if (summary.get("world_size") or 1) > 1 else "")
                  + f", {took} of training"]
    lines += ["", "## Metrics", ""]
    lines += _metric_lines(metrics, summary, task, step)
    lines += ["", "## How to load", ""]
    lines += _usage(name, run, task, max_length)
    lines += ["", f"Made with `tinyformer export --ckpt {run.given} --format hf`.", ""]
    return "\n".join(lines)


def _data_lines(data) -> list[str]:
    out = []
    for what, path in (("training", data.train), ("validation", data.val)):
        if not path:
            continue
        try:
            meta = read_token_file(path)[1]
        except TinyformerError:
            out.append(f"- {what} tokens: `{Path(path).name}` (no longer readable)")
            continue
        sources = ", ".join(f"`{Path(str(s.get('path', '?'))).name}`" for s in meta.get("sources", [])
                            if isinstance(s, dict)) or "unknown sources"
        out.append(f"- {what}: {meta.get('n_tokens', 0):,} tokens of {sources}"
                   + (f" ({meta['bytes_per_token']:.2f} bytes per token)" if meta.get("bytes_per_token") else ""))
    if data.tokenizer:
        out.append("- tokenizer: tinyformer byte-level BPE (`tokenizer.json` here)")
    return out


def _metric_lines(metrics: dict[str, Any], summary: dict[str, Any], task: bool, step: int | None) -> list[str]:
    at = f" at step {metrics['step']}" if metrics.get("step") is not None else ""
    if task:
        acc = metrics.get("accuracy") or summary.get("accuracy") or {}
        if not acc:
            return ["No evaluation was recorded."]
        return [f"Exact-match accuracy per length bin{at}:", "", "| bin | accuracy |", "|---|---|",
                *(f"| {b} | {a:.3f} |" for b, a in acc.items())]
    if metrics.get("val_loss") is None:
        return ["No validation loss was recorded (the run had no `data.val`)."]
    out = [f"On the validation file{at} ({metrics.get('val_tokens', 0):,} tokens):", "",
           f"- loss {metrics['val_loss']:.4f} nats/token, perplexity {metrics['val_ppl']:.3f}"]
    if metrics.get("val_bpb") is not None:
        out.append(f"- {metrics['val_bpb']:.4f} bits per byte")
    if summary.get("train_loss") is not None:
        out.append(f"- final training loss {summary['train_loss']:.4f}")
    return out


def _usage(name: str, run, task: bool, max_length: int) -> list[str]:
    if task:
        vocab = " ".join(get_task(run.config.task.name).vocab)
        return ["```python", "from transformers import AutoModelForCausalLM",
                f'model = AutoModelForCausalLM.from_pretrained("{name}")', "```", "",
                f"A task model has no text tokenizer: id i is the i-th symbol of `{vocab}`. "
                "`tinyformer sample --ckpt RUN --prompt ...` turns natural inputs into these ids."]
    prompt, n_new = _example_prompt(run.tokenizer(), max_length)
    return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
            f'model = AutoModelForCausalLM.from_pretrained("{name}")',
            f'ids = tokenizer("{prompt}", return_tensors="pt").input_ids',
            f"out = model.generate(ids, max_new_tokens={n_new}, do_sample=True, top_k=50)"
            f"  # prompt + new tokens <= the {max_length}-token context",
            "print(tokenizer.decode(out[0]))", "```"]


def _example_prompt(tokenizer, max_length: int, words: str = "Once upon a time") -> tuple[str, int]:
    """The loading example's prompt (the longest start of `words` that leaves room for a new token) and its
    number of new tokens (at most 50), so prompt and continuation stay inside the model's context: beyond
    a learned position table the exported model fails with an IndexError."""
    parts = words.split()
    while len(parts) > 1 and tokenizer is not None and len(tokenizer.encode(" ".join(parts))) >= max_length:
        parts.pop()
    text = " ".join(parts)
    n_prompt = len(tokenizer.encode(text)) if tokenizer is not None else len(parts)
    return text, max(1, min(50, max_length - n_prompt))


# ------------------------------------------------------------------------------------------------ push


def hub_api(token: str | None):
    """The `huggingface_hub.HfApi` used by `push` (tests replace this function with a fake)."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise TinyformerError("pushing needs huggingface_hub: pip install 'tinyformer[hf]'") from None
    return HfApi(token=token)


def find_token(given: str | None) -> str:
    """--token, else HF_TOKEN / the token `huggingface-cli login` saved; a one-line error when there is none."""
    if given:
        return given
    try:
        from huggingface_hub import get_token
    except ImportError:
        raise TinyformerError("pushing needs huggingface_hub: pip install 'tinyformer[hf]'") from None
    token = get_token()
    if not token:
        raise TinyformerError("no Hugging Face token: run `huggingface-cli login`, set HF_TOKEN, or pass --token")
    return token


def push_folder(folder: Path, repo: str, token: str, private: bool = False, message: str | None = None) -> str:
    """Create `repo` if needed and upload `folder` to it; returns the repo's URL. Network and permission
    failures are one line."""
    api = hub_api(token)
    try:
        url = api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                          commit_message=message or "Upload model exported by tinyformer")
    except TinyformerError:
        raise
    except Exception as exc:  # requests/httpx connection errors, HfHubHTTPError (401, 403, ...), timeouts
        raise TinyformerError(f"could not push to the Hugging Face Hub repo {repo}: {_reason(exc)}") from None
    return str(url)


def _reason(exc: Exception) -> str:
    text = (str(exc).splitlines() or [""])[0][:200]
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return f"the token was refused (HTTP {status}); check it has write access ({text})"
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)) or "connect" in type(exc).__name__.lower() \
            or "resolve" in text.lower() or "connection" in text.lower():
        return f"the Hub cannot be reached ({type(exc).__name__}: {text}); check the network"
    return f"{type(exc).__name__}: {text}"
