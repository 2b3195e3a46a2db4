"""The task registry: name -> task class. A task file registers its classes with `@register_task`."""

from __future__ import annotations

import difflib
import importlib

from tinyformer.errors import TinyformerError

TASKS: dict[str, type] = {}
BUILTIN_TASK_FILES = ("copy", "retrieval", "sort", "parity", "majority", "addition")


def register_task(cls: type) -> type:
    """Class decorator: make a Task subclass available by its `name` (CLI `--task NAME`, `get_task`)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no task name")
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"task name {cls.name!r} is registered twice")
    TASKS[cls.name] = cls
    return cls


def task_names() -> list[str]:
    """Every registered task name: built-in task files in BUILTIN_TASK_FILES order (whatever order they were
    imported in), then any other registered task, each file's tasks in registration order."""
    _load_builtin_tasks()
    files = [f"tinyformer.tasks.{m}" for m in BUILTIN_TASK_FILES]

    def file_rank(name: str) -> int:
        module = TASKS[name].__module__
        return files.index(module) if module in files else len(files)

    return sorted(TASKS, key=file_rank)  # stable: registration order within a file


def get_task(name: str):
    """A fresh task instance by name, or a one-line error listing the valid names.

    `NAME:OPTIONS` (e.g. `add:base=16,hints=true`) configures a task that has a `from_options` classmethod.
    """
    _load_builtin_tasks()
    name, _, options = name.partition(":")
    if options and name in TASKS:
        if not hasattr(TASKS[name], "from_options"):
            raise TinyformerError(f"task {name!r} takes no options; drop ':{options}'")
        return TASKS[name].from_options(options)
    if name not in TASKS:
        # a name in the wrong case (`ur` for `UR`) is the likeliest slip: match case-insensitively first
        near = [t for t in TASKS if t.lower() == name.lower()] or difflib.get_close_matches(name, TASKS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise TinyformerError(f"unknown task {name!r}; {hint}valid tasks: {', '.join(task_names())}")
    return TASKS[name]()


def _load_builtin_tasks() -> None:
    # importing the task files runs their @register_task decorators; this order is the listing order
    for module in BUILTIN_TASK_FILES:
        importlib.import_module(f"tinyformer.tasks.{module}")
