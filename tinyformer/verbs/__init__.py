"""The CLI verbs, one module each, with `add_arguments(parser)` and `run(args) -> int`: argument parsing,
calling the library and printing. The top layer: nothing in the library imports a verb."""
