"""The one entry point: `tinyformer <verb> ...` (also `python -m tinyformer`).

Each verb lives in its own module with `add_arguments(parser)` and `run(args) -> int`; only the chosen
verb's module is imported, so `tinyformer tokenizer ...` never pays for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from tinyformer import __version__
from tinyformer.errors import TinyformerError
from tinyformer.fileio import DISK_FULL, disk_full_error

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "tokenizer": ("tinyformer.verbs.tokenizer", "train, encode with, inspect and export byte-level BPE tokenizers"),
    "data": ("tinyformer.verbs.data", "download and prepare corpora (TinyStories, Tiny Shakespeare)"),
    "train": ("tinyformer.verbs.train", "train any run (a language model or a lab task) from a YAML config + key=value overrides"),
    "eval": ("tinyformer.verbs.eval", "a run's loss, perplexity, bits per byte; a task run's accuracy per length bin"),
    "sample": ("tinyformer.verbs.sample", "generate text from a run, or a task run's answers"),
    "plot": ("tinyformer.verbs.plot", "draw loss, perplexity or accuracy curves of one or more runs"),
    "compare": ("tinyformer.verbs.compare", "train variants of a config over seeds, then compare them"),
    "export": ("tinyformer.verbs.export", "export a run to the HF format (GPT-2, Llama, MPT)"),
    "push": ("tinyformer.verbs.push", "publish a run on the Hugging Face Hub (export + model card + upload)"),
    "lengen": ("tinyformer.verbs.lengen", "length-generalization lab: train, sweep, best, reproduce, report"),
    "attention": ("tinyformer.verbs.attention", "attention heatmaps of a run on a text"),
    "demo": ("tinyformer.verbs.demo", "the embedded default: a short study that needs no downloads"),
}


def _available_verbs() -> dict[str, tuple[str, str]]:
    # Look for the module's file rather than calling find_spec, which would import the parent package
    # (and torch with it) just to print the help.
    root = Path(__file__).resolve().parent.parent
    out = {}
    for verb, (module, help_text) in VERBS.items():
        if (root / (module.replace(".", "/") + ".py")).is_file():
            out[verb] = (module, help_text)
    return out


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as the one line every other error is (the usage is one --help away)."""

    def error(self, message: str):
        print(f"tinyformer: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="tinyformer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tinyformer {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, (module, help_text) in _available_verbs().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == verb:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(verb)
    try:  # argparse exits on --help, --version and its own errors: give its code back to the caller
        # key=value overrides may come anywhere, also after options (argparse takes one positional block only)
        args, extra = parser.parse_known_args(argv)
        if extra:
            if isinstance(getattr(args, "overrides", None), list) and all("=" in e and not e.startswith("-") for e in extra):
                args.overrides += extra
            else:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if args.verb is None:
        parser.print_help()
        return 0
    module = importlib.import_module(_available_verbs()[args.verb][0])
    try:
        return int(module.run(args) or 0)
    except TinyformerError as exc:
        print(f"tinyformer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        import signal

        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"tinyformer: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + int(signum)
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            return _internal_error(exc, argv)
        error = disk_full_error(exc.filename)  # a write no caller named the file of
        print(f"tinyformer: error: {error}", file=sys.stderr)
        return error.exit_code
    except Exception as exc:  # a bug, not the user's mistake: one line here, the traceback in a file
        return _internal_error(exc, argv)


def _internal_error(exc: Exception, argv: list[str]) -> int:
    """One line for a bug, the traceback in a report file (or here, with TINYFORMER_TRACEBACK=1)."""
    if os.environ.get("TINYFORMER_TRACEBACK"):
        raise exc
    report = write_error_report(exc, argv)
    first = (str(exc).splitlines() or [""])[0][:300]
    where = f"full report in {report}" if report else "no report could be written"
    print(f"tinyformer: internal error: {type(exc).__name__}: {first} ({where}; please attach it to a bug "
          "report, or set TINYFORMER_TRACEBACK=1 to see the traceback here)", file=sys.stderr)
    return 1


def write_error_report(exc: BaseException, argv: list[str]) -> Path | None:
    """The traceback of an internal error, with the command and versions, in a new file in the temp dir."""
    import platform
    import tempfile
    import time
    import traceback

    try:
        fd, path = tempfile.mkstemp(prefix=f"tinyformer-error-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"tinyformer {__version__}, Python {platform.python_version()} on {platform.platform()}\n")
            f.write(f"command: tinyformer {' '.join(argv)}\n\n")
            f.write("".join(traceback.format_exception(exc)))
        return Path(path)
    except OSError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
