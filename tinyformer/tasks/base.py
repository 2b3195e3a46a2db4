"""What a synthetic task is: a symbol vocabulary, a length rule and a vectorized example builder.

Every task has its own vocabulary: the strings "0".."n-1" as ids 0..n-1, then `<bos>`, `<sep>`, `<eos>`,
`<pad>`. A task builds a whole batch of examples at once with numpy (one row per example, right-padded
with `<pad>`), so the data generator is never what a training step waits on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinyformer.batch import IGNORE_INDEX
from tinyformer.errors import TinyformerError

SPECIAL_TOKENS = ("<bos>", "<sep>", "<eos>", "<pad>")


@dataclass
class Examples:
    """A padded batch of examples: `tokens` [N, T] int64, `supervised` [N, T] bool, `seq_lens` [N]."""

    tokens: np.ndarray
    supervised: np.ndarray
    seq_lens: np.ndarray
    lengths: np.ndarray  # the task length of each example (what the length bins are about)

    @property
    def labels(self) -> np.ndarray:
        """`tokens` where supervised, -100 elsewhere (the ignore index of the loss)."""
        return np.where(self.supervised, self.tokens, IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.tokens)


class Task:
    """Base class of a task. Subclasses set `name`, `n_symbols`, `description` and implement `build`.

    `build(rng, lengths)` returns `(tokens, supervised)` for one example per entry of `lengths`, padded to
    the longest with `pad`. Everything else (vocabulary, length rule, rejection loop) is shared.
    """

    name: str = ""
    n_symbols: int = 0
    description: str = ""
    min_length: int = 1  # the smallest task length this task can build
    max_length: int | None = None  # the largest (tasks drawing symbols without replacement: n_symbols)
    length_rule: str = "lo..hi"  # how a requested range lo-hi becomes the lengths drawn (for messages)

    # the four special ids follow the n symbols
    @property
    def bos(self) -> int:
        return self.n_symbols

    @property
    def sep(self) -> int:
        return self.n_symbols + 1

    @property
    def eos(self) -> int:
        return self.n_symbols + 2

    @property
    def pad(self) -> int:
        return self.n_symbols + 3

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + len(SPECIAL_TOKENS)

    @property
    def vocab(self) -> list[str]:
        """Id -> string: "0".."n-1", then the special tokens."""
        return [str(i) for i in range(self.n_symbols)] + list(SPECIAL_TOKENS)

    def decode(self, ids) -> str:
        """Ids -> a space-separated string, for people reading samples."""
        vocab = self.vocab
        return " ".join(vocab[int(i)] for i in ids)

    def encode(self, text: str) -> list[int]:
        """A space-separated string of symbols (as `decode` writes it) -> ids; unknown symbols are an error."""
        index = {s: i for i, s in enumerate(self.vocab)}
        bad = sorted({s for s in text.split() if s not in index})
        if bad:
            raise TinyformerError(f"text has symbols outside the vocabulary of task {self.name}: {' '.join(bad)}; "
                                  f"write symbols separated by spaces, from: {' '.join(self.vocab)}")
        return [index[s] for s in text.split()]

    # --- human-readable prompts and answers (`tinyformer sample --prompt`) -------------------------
    query: bool = False  # the prompt ends with a query symbol after <sep> (retrieval)

    def prompt_ids(self, text: str) -> list[int]:
        """A person's input -> the prompt the model continues. Symbols separated by spaces or commas (or
        written together when every symbol is one character), a query after `?` for retrieval tasks:
        `3 1 4` -> `<bos> 3 1 4 <sep>`, `0 3 1 4 ? 3` -> `<bos> 0 3 1 4 <sep> 3`. Text already in the task's
        own form (starting with `<bos>`) is taken as it is."""
        text = text.strip()
        if text.startswith("<bos>"):
            return self.encode(text)
        context, mark, query = text.partition("?")
        if bool(mark) != self.query:
            want = "a query after ?, e.g. '0 3 1 4 ? 3'" if self.query else "no ?"
            raise TinyformerError(f"task {self.name} takes {want}; got {text!r}")
        symbols = self._symbols(context)
        if not symbols:
            raise TinyformerError(f"the input {text!r} has no symbols; write symbols of task {self.name} "
                                  f"({' '.join(self.vocab[: self.n_symbols])})")
        ids = [self.bos, *symbols, self.sep]
        if self.query:
            q = self._symbols(query)
            if len(q) != 1:
                raise TinyformerError(f"write exactly one query symbol after ?, got {query.strip()!r}")
            ids += q
        return ids

    def _symbols(self, text: str) -> list[int]:
        parts = text.replace(",", " ").split()
        if len(parts) == 1 and self.n_symbols <= 10:  # "1011": one symbol per character
            parts = list(parts[0])
        bad = [p for p in parts if not (p.isdigit() and int(p) < self.n_symbols)]
        if bad:
            raise TinyformerError(f"{' '.join(bad)} {'is not a symbol' if len(bad) == 1 else 'are not symbols'} of "
                                  f"task {self.name}; its symbols are {' '.join(self.vocab[: self.n_symbols])}")
        return [int(p) for p in parts]

    def prompt_text(self, ids) -> str:
        """A prompt in the task's own ids -> the input as a person writes it (the inverse of prompt_ids)."""
        ids = [int(i) for i in ids]
        if ids[:1] != [self.bos] or self.sep not in ids:
            return self.decode(ids)
        sep = ids.index(self.sep)
        text = " ".join(self.vocab[i] for i in ids[1:sep])
        return text + (f" ? {' '.join(self.vocab[i] for i in ids[sep + 1:])}" if self.query else "")

    single_answer: bool = False  # the answer is one symbol (`answer_layout`); else one per input symbol

    def answer_length(self, prompt) -> int:
        """The most tokens the answer to `prompt` (the task's ids) takes: what the task supervises after the
        prompt, so the closing token when it is supervised (one per input symbol + `<eos>`), and the single
        symbol alone for answer-only tasks, whose `<eos>` is never a target (a model never learns to write it)."""
        if self.single_answer:
            return 1
        return sum(1 for i in prompt if int(i) < self.n_symbols) + 1

    def answer_end(self) -> int:
        """The id that closes an answer (generation stops there)."""
        return self.eos

    def answer_text(self, ids) -> str:
        """Generated ids after the prompt -> the answer as a person writes it (up to the closing token)."""
        ids = [int(i) for i in ids]
        if self.answer_end() in ids:
            ids = ids[: ids.index(self.answer_end())]
        return " ".join(self.vocab[i] for i in ids)

    def same_answer(self, got: str, want: str) -> bool:
        """Whether two human-readable answers are the same (spacing and commas aside)."""
        def parts(text: str) -> list[str]:
            out = text.replace(",", " ").split()
            return list(out[0]) if len(out) == 1 and self.n_symbols <= 10 else out

        return parts(got) == parts(want)

    # --- lengths ---------------------------------------------------------------------------------
    def length_range(self, lo: int, hi: int) -> tuple[int, int]:
        """The task lengths drawn for a requested range `lo..hi` (inclusive). Default: the range itself."""
        return max(lo, self.min_length), hi

    def check_range(self, lo: int, hi: int) -> tuple[int, int]:
        """The drawn range, or a one-line error when the range is empty or beyond what the task can build."""
        if lo < 1 or hi < lo:
            raise TinyformerError(f"length range {lo}-{hi} is not valid; use LO-HI with 1 <= LO <= HI")
        first, last = self.length_range(lo, hi)
        if last < first:
            raise TinyformerError(
                f"task {self.name} cannot build examples in the length range {lo}-{hi}: it draws lengths "
                f"{self.length_rule} (at least {self.min_length}), which is empty there; widen the range"
            )
        if self.max_length is not None and last > self.max_length:
            raise TinyformerError(
                f"task {self.name} draws {self.n_symbols} symbols without replacement, so lengths above "
                f"{self.max_length} are impossible; the range {lo}-{hi} is too long"
            )
        return first, last

    def sample_lengths(self, rng: np.random.Generator, lo: int, hi: int, count: int) -> np.ndarray:
        """`count` task lengths, uniform over the drawn range of `lo..hi`."""
        first, last = self.check_range(lo, hi)
        return rng.integers(first, last + 1, size=count)

    def sequence_length(self, length: int) -> int:
        """Number of tokens of an example of task length `length`, `<bos>` to `<eos>` included."""
        raise NotImplementedError

    # --- position coupling (`model.position=coupled`) ---------------------------------------------
    def coupling_refusal(self) -> str | None:
        """Why this task cannot couple positions, or None when `coupled_positions` is defined."""
        if type(self).coupled_positions is Task.coupled_positions:
            return f"task {self.name} has no position coupling rule"
        return None

    def coupled_positions(self, ids: np.ndarray) -> np.ndarray:
        """Position coupling (Cho et al., 2024): ids [N, T] of model inputs -> position ids [N, T] where the
        tokens that must be aligned share one id (1, 2, ...) and tokens outside every alignment get 0. A
        task that has a rule overrides this; its answer tokens' ids depend only on the tokens before them,
        so greedy decoding can compute each new token's id from the sequence so far."""
        raise TinyformerError(self.coupling_refusal() or f"task {self.name} has no position coupling rule")

    # --- building --------------------------------------------------------------------------------
    def build(self, rng: np.random.Generator, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # a task whose rejected samples are redrawn at a new length (the reference code's rule) sets this and
    # overrides `sample`; the lengths of its examples are then known only after sampling
    redraws_length: bool = False

    def sample(self, rng: np.random.Generator, lo: int, hi: int, count: int) -> Examples:
        """`count` examples with task lengths uniform over the drawn range of `lo..hi`."""
        return self.generate(rng, self.sample_lengths(rng, lo, hi, count))

    def generate(self, rng: np.random.Generator, lengths: np.ndarray) -> Examples:
        """One example per entry of `lengths`, as a padded batch."""
        lengths = np.asarray(lengths, dtype=np.int64)
        tokens, supervised = self.build(rng, lengths)
        seq_lens = np.array([self.sequence_length(int(n)) for n in lengths], dtype=np.int64)
        return Examples(tokens.astype(np.int64), supervised, seq_lens, lengths)


# --- helpers shared by the task files ----------------------------------------------------------


def columns(width: int) -> np.ndarray:
    """Column index j as a [1, width] array, to compare against per-row [N, 1] lengths."""
    return np.arange(width)[None, :]


def gather(rows: np.ndarray, index: np.ndarray) -> np.ndarray:
    """rows[i, index[i, j]] with index clipped into range (out-of-range cells are masked by the caller)."""
    return np.take_along_axis(rows, np.clip(index, 0, rows.shape[1] - 1), axis=1)


def first_index(ids: np.ndarray, token: int) -> np.ndarray:
    """[N, 1]: the column of each row's first `token`, or the row's width when it has none."""
    found = ids == token
    return np.where(found.any(1), found.argmax(1), ids.shape[1])[:, None]


def distinct_symbols(rng: np.random.Generator, n_rows: int, n_symbols: int, width: int) -> np.ndarray:
    """[n_rows, width] symbols drawn without replacement within each row (a random permutation prefix)."""
    return np.argsort(rng.random((n_rows, n_symbols)), axis=1)[:, :width]


def redraw_rejected(draw, rng: np.random.Generator, lengths: np.ndarray, max_rounds: int = 1000):
    """Call `draw(rng, lengths, width) -> (rows, ok)` and redraw the rows not `ok` at the same length.

    Redrawing at the same length keeps the length distribution exactly uniform despite the rejections.
    Returns the accepted rows and whatever extra arrays `draw` returned after `ok` (one per row).
    """
    width = int(lengths.max()) if len(lengths) else 0
    rows, ok, *extra = draw(rng, lengths, width)
    for _ in range(max_rounds):
        bad = np.flatnonzero(~ok)
        if bad.size == 0:
            return (rows, *extra)
        new_rows, new_ok, *new_extra = draw(rng, lengths[bad], width)
        rows[bad], ok[bad] = new_rows, new_ok
        for old, new in zip(extra, new_extra):
            old[bad] = new
    raise RuntimeError("rejection sampling did not converge; the task's acceptance rule is too strict")


def source_target_layout(task: Task, source: np.ndarray, target: np.ndarray, lengths: np.ndarray):
    """`<bos> s1..sL <sep> t1..tL <eos>` per row; supervised: every target token and `<eos>`."""
    width = source.shape[1]
    j = columns(2 * width + 3)
    n = lengths[:, None]
    in_source = (j >= 1) & (j <= n)
    in_target = (j >= n + 2) & (j <= 2 * n + 1)
    tokens = np.full((len(lengths), j.shape[1]), task.pad, dtype=np.int64)
    tokens = np.where(in_source, gather(source, j - 1), tokens)
    tokens = np.where(in_target, gather(target, j - n - 2), tokens)
    tokens[:, 0] = task.bos
    tokens = np.where(j == n + 1, task.sep, tokens)
    tokens = np.where(j == 2 * n + 2, task.eos, tokens)
    return tokens, in_target | (j == 2 * n + 2)


def answer_layout(task: Task, context: np.ndarray, lengths: np.ndarray, query, answer: np.ndarray):
    """`<bos> c1..cC <sep> [q] a <eos>` per row; supervised: only the answer `a`."""
    width = context.shape[1]
    tail = 1 if query is None else 2  # tokens after <sep> up to and including the answer
    j = columns(width + tail + 3)
    n = lengths[:, None]
    tokens = np.full((len(lengths), j.shape[1]), task.pad, dtype=np.int64)
    tokens = np.where((j >= 1) & (j <= n), gather(context, j - 1), tokens)
    tokens[:, 0] = task.bos
    tokens = np.where(j == n + 1, task.sep, tokens)
    if query is not None:
        tokens = np.where(j == n + 2, query[:, None], tokens)
    answer_at = j == n + 1 + tail
    tokens = np.where(answer_at, answer[:, None], tokens)
    tokens = np.where(j == n + 2 + tail, task.eos, tokens)
    return tokens, answer_at
