"""What a task run derives from its RunConfig: the task, length bins, fixed eval sets, position ids, the
position table size, the model config and the training stream. Shared by training and every verb that
reads a task run (eval, sample, attention)."""

from __future__ import annotations

import dataclasses

import numpy as np

from tinyformer.errors import TinyformerError
from tinyformer.model.config import ModelConfig
from tinyformer.model.positions import COUPLED, scheme
from tinyformer.tasks import (
    TaskStream,
    bin_name,
    get_task,
    make_eval_bins,
    parse_range,
    task_names,
    task_positions,
)
from tinyformer.tasks.stream import max_input_length
from tinyformer.train.config import RunConfig


def model_position(pe: str) -> str:
    """The model.position for a scheme name of the lab (the papers' `ape` = learned, or any model.position),
    or a one-line error listing the valid names (`tinyformer.model.positions.LAB_NAMES`)."""
    return scheme(pe, aliases=True).name


def scheme_label(position: str) -> str:
    """The name reports use for a model.position: `ape` for learned absolute positions."""
    return scheme(position).report_name


class TaskSetup:
    """Everything a task run derives from its config; built before any directory is touched, so a bin the
    task cannot make or a position table too small for the longest bin is a one-line error up front."""

    def __init__(self, cfg: RunConfig) -> None:
        if cfg.task is None:
            raise TinyformerError("this run has no task section; set task.name (for example task.name=UR)")
        self.cfg = cfg
        self.task = get_task(cfg.task.name)
        self.train_range = parse_range(cfg.task.train_lengths)
        if not cfg.eval.bins:
            raise TinyformerError("eval.bins is empty; give at least one length bin such as [1-50]")
        self.bins = [parse_range(b) for b in cfg.eval.bins]
        self.task.check_range(*self.train_range)
        for lo, hi in self.bins:
            self.task.check_range(lo, hi)
        for name in ("examples", "batch_size"):
            if getattr(cfg.eval, name) < 1:
                raise TinyformerError(f"eval.{name} must be at least 1, got {getattr(cfg.eval, name)}")
        self.position = cfg.model.position
        self.scheme = cfg.model.scheme
        self.position_kind = self.scheme.ids
        refusal = self.task.coupling_refusal() if self.position_kind == COUPLED else None
        if refusal:
            have = [n for n in task_names() if get_task(n).coupling_refusal() is None]
            raise TinyformerError(f"{refusal}, so model.position={self.position} cannot train on it; tasks with one: "
                                  f"{', '.join(have)}")
        self.position_fn = task_positions(self.task, self.position_kind)
        self.eval_sets = make_eval_bins(self.task, self.bins, cfg.eval.examples, cfg.eval.seed)
        # the largest position id any evaluated or trained input uses (evaluation starts at 0)
        needed = max(int(self.position_fn(es.examples.tokens[:, :-1]).max()) + 1 for es in self.eval_sets)
        train_needed = self._train_positions_needed()
        self.positions_needed = max(needed, train_needed)
        self.random_positions_to = self._random_positions_to(train_needed)
        given = "n_positions" in cfg.model_keys and cfg.model.n_positions is not None
        self.table_size = (cfg.model.n_positions if given else
                           max(self.positions_needed, self.random_positions_to or 0))
        if self.scheme.has_table and self.random_positions_to and self.table_size < self.random_positions_to:
            raise TinyformerError(
                f"task.random_positions_to={self.random_positions_to} draws position ids beyond the table of "
                f"model.n_positions={self.table_size}; raise model.n_positions to {self.random_positions_to} "
                "or leave it unset")
        if self.scheme.has_table and self.table_size < needed:
            longest = max(self.bins, key=lambda b: b[1])
            raise TinyformerError(
                f"bin {bin_name(*longest)} of task {self.task.name} needs {needed} {self.position} positions but "
                f"model.n_positions={self.table_size} can represent only {self.table_size}; raise "
                f"model.n_positions to at least {needed} or drop that bin"
            )
        self.train_bin = self._train_bin_name()
        self.seq_len = max_input_length(self.task, [self.train_range])
        offset = cfg.task.random_offset
        if offset and cfg.task.random_positions:
            raise TinyformerError("task.random_offset=true and task.random_positions=true exclude each other "
                                  "(both move the training position ids); keep one")
        default = self.scheme.trained_at_random_offsets and not cfg.task.random_positions
        self.random_offset = default if offset is None else offset

    def _train_positions_needed(self) -> int:
        rng = np.random.default_rng(0)
        longest = self.task.check_range(*self.train_range)[1]
        ex = self.task.generate(rng, np.array([longest]))
        return int(self.position_fn(ex.tokens[:, :-1]).max()) + 1

    def _random_positions_to(self, train_needed: int) -> int | None:
        """L_max of randomized positions: task.random_positions_to, by default the longest evaluated input's
        positions; None when the run does not randomize them."""
        task = self.cfg.task
        if not task.random_positions:
            if task.random_positions_to is not None:
                raise TinyformerError("task.random_positions_to is set but task.random_positions is off; "
                                      "set task.random_positions=true or drop task.random_positions_to")
            return None
        top = self.positions_needed if task.random_positions_to is None else task.random_positions_to
        if top < train_needed:
            raise TinyformerError(
                f"task.random_positions_to={top} is below the {train_needed} positions of task {self.task.name}'s "
                f"longest training input; raise it to at least {train_needed}")
        return top

    def _train_bin_name(self) -> str:
        """The bin equal to the training range, else the first bin inside it: the one that stops training."""
        lo, hi = self.train_range
        for b in self.bins:
            if b == (lo, hi):
                return bin_name(*b)
        inside = [b for b in self.bins if b[0] >= lo and b[1] <= hi]
        return bin_name(*(inside[0] if inside else self.bins[0]))

    def stream(self, batch_size: int, rank: int = 0, world_size: int = 1) -> TaskStream:
        return TaskStream(
            self.task,
            self.train_range,
            batch_size=batch_size,
            seed=self.cfg.train.seed if self.cfg.task.seed is None else self.cfg.task.seed,
            random_offset_to=self.table_size if self.random_offset else None,
            positions=self.position_kind,
            random_positions_to=self.random_positions_to,
            rank=rank,
            world_size=world_size,
        )

    def eval_positions(self, ids: np.ndarray) -> np.ndarray:
        return self.position_fn(ids)

    def model_config(self) -> ModelConfig:
        """The model section with the task's vocabulary and (unless given) the position table it needs."""
        model = self.cfg.model
        keys = self.cfg.model_keys
        if "vocab_size" in keys and model.vocab_size != self.task.vocab_size:
            raise TinyformerError(
                f"model.vocab_size={model.vocab_size} but task {self.task.name} has {self.task.vocab_size} "
                "symbols; a task run takes its vocabulary from the task: remove model.vocab_size"
            )
        return dataclasses.replace(
            model,
            vocab_size=self.task.vocab_size,
            n_positions=self.table_size,
            max_seq_len=model.max_seq_len if "max_seq_len" in keys else self.table_size,
        )
