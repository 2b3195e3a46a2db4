"""Task data for training and evaluation: an endless seeded batch stream and fixed seeded length bins.

`TaskStream` is a batch source for a trainer (`next_batch`, `state_dict`, `load_state_dict`): next-token
`ids` / `targets` (-100 where unsupervised), right-padded with `<pad>`, plus `position_ids`. Under causal
attention right padding cannot change any real token's output, so no attention mask is needed; pass
`attention_mask=True` to get one anyway. `EvalSet` holds one length bin, fixed by its seed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from tinyformer.batch import offset_positions, randomized_positions, run_positions
from tinyformer.errors import TinyformerError
from tinyformer.tasks.base import Examples, Task

DEFAULT_TRAIN_LENGTHS = (1, 50)
DEFAULT_EVAL_BINS = ((1, 50), (51, 100), (101, 150))
DEFAULT_EVAL_EXAMPLES = 2000


def parse_range(text: str) -> tuple[int, int]:
    """'51-100' -> (51, 100), with a one-line error for anything else."""
    try:
        lo, hi = (int(x) for x in str(text).split("-"))
    except ValueError:
        raise TinyformerError(f"length range {text!r} is not of the form LO-HI (for example 51-100)") from None
    if lo < 1 or hi < lo:
        raise TinyformerError(f"length range {text!r} is not valid; use LO-HI with 1 <= LO <= HI")
    return lo, hi


def bin_name(lo: int, hi: int) -> str:
    return f"{lo}-{hi}"


def max_input_length(task: Task, ranges) -> int:
    """The longest model input (sequence minus its last token) any of `ranges` can produce."""
    return max(task.sequence_length(task.check_range(lo, hi)[1]) for lo, hi in ranges) - 1


def to_model_arrays(examples: Examples):
    """Shift for next-token prediction: (ids, targets, n_real) with ids = tokens[:-1], targets = labels[1:]."""
    return examples.tokens[:, :-1], examples.labels[:, 1:], examples.seq_lens - 1


def sequence_positions(ids: np.ndarray, n_symbols: int) -> np.ndarray:
    """0..T-1 in every row: the usual position ids."""
    del n_symbols
    return np.broadcast_to(np.arange(ids.shape[1])[None, :], ids.shape).copy()


def symbol_run_positions(ids: np.ndarray, n_symbols: int) -> np.ndarray:
    """Abacus-style ids: the 1-based index of each symbol inside its run of symbols, 0 for special tokens."""
    return run_positions(ids < n_symbols)


POSITION_KINDS = {"sequence": sequence_positions, "symbol_runs": symbol_run_positions}


def task_positions(task: Task, kind: str):
    """ids [B, T] -> position ids [B, T] of `kind` for `task`: a key of POSITION_KINDS, or "coupled" (the
    task's own alignment rule, `Task.coupled_positions`)."""
    if kind == "coupled":
        return task.coupled_positions
    fn = POSITION_KINDS[kind]
    return lambda ids: fn(ids, task.n_symbols)


class TaskStream:
    """An endless, seeded stream of training batches with task lengths uniform in `lengths`.

    `random_offset_to`: when set (learned absolute positions), every example's position ids start at a
    uniform random offset such that its last position stays below this value, so that every position up to
    the longest evaluated length is trained while evaluation starts at 0.
    `random_positions_to`: when set (randomized positions, any scheme), every example's ids are a sorted random
    subset of [0, random_positions_to) instead (0 kept for tokens outside runs); evaluation counts from 0.
    `positions`: "sequence" (0..T-1), "symbol_runs" (Abacus-style index inside each run of symbols) or
    "coupled" (the task's position coupling).
    With several processes each call draws one global batch of `batch_size * world_size` examples (the same
    on every process) and a process keeps its own rows, so N processes see what one process would.
    """

    def __init__(
        self,
        task: Task,
        lengths: tuple[int, int] = DEFAULT_TRAIN_LENGTHS,
        batch_size: int = 64,
        seed: int = 0,
        random_offset_to: int | None = None,
        attention_mask: bool = False,
        positions: str = "sequence",
        random_positions_to: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.task = task
        task.check_range(*lengths)
        self.lengths = (int(lengths[0]), int(lengths[1]))
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.random_offset_to = random_offset_to
        self.attention_mask = attention_mask
        self.positions = positions
        self.position_fn = task_positions(task, positions)
        self.random_positions_to = random_positions_to
        if random_offset_to is not None and random_positions_to is not None:
            raise TinyformerError("random position offsets and randomized positions exclude each other; "
                                  "set task.random_offset=false with task.random_positions=true")
        if random_offset_to is not None and self.positions_reach() > random_offset_to:
            raise TinyformerError(
                f"training sequences of task {task.name} reach {self.positions_reach()} "
                f"positions but the position table has {random_offset_to}; raise max_positions"
            )
        if random_positions_to is not None and self.positions_reach() > random_positions_to:
            raise TinyformerError(
                f"task.random_positions_to={random_positions_to} is below the {self.positions_reach()} positions "
                f"of task {task.name}'s longest training input; raise it to at least {self.positions_reach()}"
            )
        self.rng = np.random.default_rng(seed)
        self.batches = 0

    def positions_reach(self) -> int:
        """Largest position id + 1 of the longest training input before offsets (Abacus ids count digits only)."""
        longest = self.task.generate(np.random.default_rng(0), np.array([self.task.check_range(*self.lengths)[1]]))
        return int(self.position_fn(to_model_arrays(longest)[0]).max()) + 1

    def next_arrays(self) -> dict[str, np.ndarray]:
        """The next batch as numpy arrays (what `next_batch` turns into tensors)."""
        task, rng = self.task, self.rng
        examples = task.sample(rng, *self.lengths, self.batch_size * self.world_size)
        ids, targets, n_real = to_model_arrays(examples)
        real = np.arange(ids.shape[1])[None, :] < n_real[:, None]
        position_ids = self.position_fn(ids)
        members_only = self.positions != "sequence"  # ids of 0 (tokens outside runs) stay 0
        if self.random_offset_to is not None:
            position_ids = offset_positions(position_ids, real, self.random_offset_to, rng, members_only)
        elif self.random_positions_to is not None:
            position_ids = randomized_positions(position_ids, real, self.random_positions_to, rng, members_only)
        batch = {"ids": ids, "targets": targets, "position_ids": position_ids}
        if self.attention_mask:
            batch["attention_mask"] = real
        if self.world_size > 1:
            mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
            batch = {k: v[mine] for k, v in batch.items()}
        self.batches += 1
        return batch

    def next_batch(self) -> dict:
        """The next batch as torch tensors: ids, targets, position_ids [, attention_mask]."""
        import torch

        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.next_arrays().items()}

    def state_dict(self) -> dict:
        return {"seed": self.seed, "batches": self.batches, "rng": self.rng.bit_generator.state,
                "global_batch": self.batch_size * self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("global_batch", self.batch_size * self.world_size) != self.batch_size * self.world_size:
            raise TinyformerError(
                f"cannot resume: the checkpoint's global batch is {state.get('global_batch')} examples, this "
                f"run's is {self.batch_size * self.world_size}; keep train.batch_size the same"
            )
        self.seed, self.batches = state["seed"], state["batches"]
        self.rng.bit_generator.state = state["rng"]


@dataclass
class EvalSet:
    """One fixed length bin: its examples sorted by length, so evaluation batches carry little padding."""

    task: Task
    lo: int
    hi: int
    examples: Examples

    @property
    def name(self) -> str:
        return bin_name(self.lo, self.hi)

    def batches(self, batch_size: int):
        """(ids, targets, n_real) numpy batches, each padded only to its own longest example."""
        ids, targets, n_real = to_model_arrays(self.examples)
        for start in range(0, len(ids), batch_size):
            stop = start + batch_size
            width = int(n_real[start:stop].max())
            yield ids[start:stop, :width], targets[start:stop, :width], n_real[start:stop]


def eval_seed(task_name: str, lo: int, hi: int, seed: int) -> np.random.SeedSequence:
    """A bin's own seed: the same (task, bin, seed) always gives the same examples, whatever else is asked."""
    return np.random.SeedSequence([seed, lo, hi, zlib.crc32(task_name.encode())])


def make_eval_set(task: Task, lo: int, hi: int, count: int = DEFAULT_EVAL_EXAMPLES, seed: int = 0) -> EvalSet:
    """`count` examples with task lengths uniform in the bin, fixed by `seed`."""
    rng = np.random.default_rng(eval_seed(task.name, lo, hi, seed))
    if task.redraws_length:  # lengths known only after sampling: sample all, then sort by length
        ex = task.sample(rng, lo, hi, count)
        order = np.argsort(ex.lengths, kind="stable")
        return EvalSet(task, lo, hi, Examples(ex.tokens[order], ex.supervised[order], ex.seq_lens[order],
                                              ex.lengths[order]))
    lengths = np.sort(task.sample_lengths(rng, lo, hi, count))
    chunks = [task.generate(rng, lengths[i : i + 256]) for i in range(0, count, 256)]
    width = max(c.tokens.shape[1] for c in chunks)
    tokens = np.full((count, width), task.pad, dtype=np.int64)
    supervised = np.zeros((count, width), dtype=bool)
    row = 0
    for c in chunks:
        tokens[row : row + len(c), : c.tokens.shape[1]] = c.tokens
        supervised[row : row + len(c), : c.tokens.shape[1]] = c.supervised
        row += len(c)
    seq_lens = np.concatenate([c.seq_lens for c in chunks])
    return EvalSet(task, lo, hi, Examples(tokens, supervised, seq_lens, lengths))


def make_eval_bins(task: Task, bins=DEFAULT_EVAL_BINS, count: int = DEFAULT_EVAL_EXAMPLES, seed: int = 0):
    """One `EvalSet` per (lo, hi) bin."""
    return [make_eval_set(task, lo, hi, count, seed) for lo, hi in bins]
