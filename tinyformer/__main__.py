"""`python -m tinyformer` is the same entry point as the `tinyformer` command (also under torchrun)."""

from tinyformer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
