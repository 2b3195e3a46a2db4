"""Synthetic tasks for the length-generalization lab: generators, symbol vocabularies, length bins."""

from tinyformer.tasks.base import IGNORE_INDEX, SPECIAL_TOKENS, Examples, Task
from tinyformer.tasks.registry import get_task, register_task, task_names
from tinyformer.tasks.stream import (
    DEFAULT_EVAL_BINS,
    DEFAULT_EVAL_EXAMPLES,
    DEFAULT_TRAIN_LENGTHS,
    POSITION_KINDS,
    EvalSet,
    TaskStream,
    bin_name,
    make_eval_bins,
    make_eval_set,
    max_input_length,
    parse_range,
    task_positions,
)

__all__ = [
    "DEFAULT_EVAL_BINS",
    "DEFAULT_EVAL_EXAMPLES",
    "DEFAULT_TRAIN_LENGTHS",
    "IGNORE_INDEX",
    "POSITION_KINDS",
    "SPECIAL_TOKENS",
    "EvalSet",
    "Examples",
    "Task",
    "TaskStream",
    "bin_name",
    "get_task",
    "make_eval_bins",
    "make_eval_set",
    "max_input_length",
    "parse_range",
    "register_task",
    "task_names",
    "task_positions",
]
