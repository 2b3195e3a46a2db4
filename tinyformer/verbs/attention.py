"""`tinyformer attention --ckpt RUN --text TEXT --out DIR`: attention heatmaps of every layer and head.

Writes `layer_00.png`, `layer_01.png`, ... (one grid of heads per layer, token labels on both axes: rows are
queries, columns keys) and `attention.npz` with the raw probabilities `layer_0` ... as [heads, T, T] plus
`ids`, `tokens` and `position_ids`. Works on language-model runs (text through the run's tokenizer/) and
on task runs (text as `sample --prompt` reads it, `Task.prompt_ids`: `0 3 1 4 ? 3`, `1342+879`, or the task's own
form from `<bos>` on; the task named by the run's config.yaml).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="run directory (language-model or task run) or checkpoint")
    parser.add_argument("--which", choices=("latest", "best"), help="checkpoint of a run (default: best, else latest)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help='input text: for a language-model run through its tokenizer (e.g. '
                      '"+101+2001+3011+"); for a task run as `sample --prompt` takes it ("0 3 1 4 ? 3", '
                      '"1342+879") or in the task\'s own form ("<bos> 0 3 1 4 <sep> 3")')
    what.add_argument("--ids", help="comma-separated token ids instead of text, e.g. 14,1,0,1,14")
    parser.add_argument("--out", required=True, type=Path, help="output directory for the PNGs and attention.npz")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


class RunInput:
    """What the CLI needs from a run: the model, how to turn text into ids and ids into labels, positions."""

    def __init__(self, model, encode, label, positions=None, vocab_size: int = 0, source: str = "") -> None:
        self.model, self.encode, self.label, self.positions = model, encode, label, positions
        self.vocab_size = vocab_size or model.config.vocab_size
        self.source = source


def open_run(path: Path, which: str | None) -> RunInput:
    """Any run or checkpoint: a task run's vocabulary and position ids, or a language model's tokenizer/."""
    import numpy as np

    from tinyformer.errors import TinyformerError
    from tinyformer.lab.setup import TaskSetup
    from tinyformer.train.rundir import Run

    run = Run(path, which)
    model = run.load_model()
    if run.kind == "task":
        setup = TaskSetup(run.config)
        task = setup.task
        if model.config.vocab_size != task.vocab_size:
            raise TinyformerError(f"run {run.path}: the model has {model.config.vocab_size} token ids but task "
                                  f"{task.name} has {task.vocab_size}; the run directory is inconsistent")
        positions = None
        if setup.scheme.needs_caller_ids:
            def positions(ids):
                return setup.eval_positions(np.asarray([ids]))[0]

        # the prompt syntax of `sample --prompt` (`0 3 1 4 ? 3`, `1342+879`), or the task's own form
        return RunInput(model, task.prompt_ids, lambda i: task.vocab[i], positions, task.vocab_size,
                        f"task {task.name}")
    tok = run.tokenizer()
    if tok is None:
        def encode(text: str) -> list[int]:
            raise TinyformerError(f"run {path} has no tokenizer/ directory, so --text cannot be encoded; pass --ids")

        return RunInput(model, encode, str, source="no tokenizer")
    if tok.vocab_size > model.config.vocab_size:
        raise TinyformerError(f"the tokenizer of {run.path} has {tok.vocab_size} ids but the model only "
                              f"{model.config.vocab_size}; they belong to different runs")

    def label(i: int) -> str:
        return tok.decode([i]).replace("\n", "\\n").replace("\t", "\\t") if i < tok.vocab_size else f"<{i}>"

    from tinyformer.lm.abacus import run_positions_of

    text_positions = run_positions_of(run, model)
    positions = None
    if text_positions is not None:  # Abacus ids on text
        def positions(ids):
            return text_positions(np.asarray([ids]))[0]

    return RunInput(model, lambda text: tok.encode(text, allowed_special="all"), label, positions,
                    source=f"tokenizer {run.path / 'tokenizer'}")


def parse_ids(text: str, vocab_size: int) -> list[int]:
    from tinyformer.errors import TinyformerError

    try:
        ids = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise TinyformerError(f"--ids {text!r} is not a comma-separated list of integers") from None
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise TinyformerError(f"--ids has ids outside the vocabulary (0..{vocab_size - 1}): {bad[:5]}")
    return ids


def attention_maps(model, ids: list[int], position_ids=None) -> list:
    """Per layer: the attention probabilities [heads, T, T] of one sequence, as float32 numpy arrays."""
    import torch

    x = torch.tensor([ids], dtype=torch.long)
    pos = None if position_ids is None else torch.as_tensor(position_ids, dtype=torch.long).unsqueeze(0)
    with torch.no_grad():
        _, _, attentions = model(x, position_ids=pos, return_attention=True)
    return [a[0].float().numpy() for a in attentions]


def plot_layer(path: Path, probs, labels: list[str], layer: int) -> None:
    """One PNG: a grid of heads, each a query x key heatmap with the tokens on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_heads, t = probs.shape[0], probs.shape[1]
    cols = min(n_heads, 4)
    rows = -(-n_heads // cols)
    cell = max(2.5, 0.22 * t + 1.0)
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * rows), squeeze=False)
    fontsize = max(4, min(9, 240 // max(t, 1)))
    for h, ax in enumerate(axes.flat):
        if h >= n_heads:
            ax.axis("off")
            continue
        ax.imshow(probs[h], vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(f"layer {layer} head {h}", fontsize=9)
        ax.set_xticks(range(t), labels, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(t), labels, fontsize=fontsize)
        ax.set_xlabel("key", fontsize=8)
        ax.set_ylabel("query", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from tinyformer.errors import TinyformerError
    from tinyformer.fileio import atomic_dir, check_output

    check_output(args.out, args.force)
    source = open_run(Path(args.ckpt), args.which)
    ids = parse_ids(args.ids, source.vocab_size) if args.ids is not None else source.encode(args.text)
    if not ids:
        raise TinyformerError("the input is empty; give --text with at least one symbol or --ids")
    position_ids = source.positions(ids) if source.positions else None
    maps = attention_maps(source.model, ids, position_ids)
    labels = [source.label(i) for i in ids]
    with atomic_dir(args.out, force=args.force) as tmp:
        arrays = {f"layer_{i}": m for i, m in enumerate(maps)}
        positions = np.asarray(position_ids if position_ids is not None else np.arange(len(ids)))
        np.savez(tmp / "attention.npz", ids=np.asarray(ids), tokens=np.asarray(labels), position_ids=positions,
                 **arrays)
        for i, m in enumerate(maps):
            plot_layer(tmp / f"layer_{i:02d}.png", m, labels, i)
    heads = maps[0].shape[0]
    files = "layer_00.png" if len(maps) == 1 else f"layer_00.png .. layer_{len(maps) - 1:02d}.png"
    print(f"{len(maps)} layer{'s' * (len(maps) != 1)} x {heads} head{'s' * (heads != 1)} over {len(ids)} "
          f"token{'s' * (len(ids) != 1)} ({source.source}) -> {args.out}/{files}, attention.npz")
    return 0
