"""`tinyformer push --ckpt RUN --repo NAME`: export a run as a Hub-ready folder (as `tinyformer export`, with
its model card) and upload it to the Hugging Face Hub with huggingface_hub."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="run directory or checkpoint directory")
    parser.add_argument("--repo", required=True, help="Hub repository, USER/NAME (created if it does not exist)")
    parser.add_argument("--which", choices=["latest", "best"], help="checkpoint of a run (default: best, else latest)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--token", help="Hugging Face token with write access (default: HF_TOKEN or the saved login)")


def run(args: argparse.Namespace) -> int:
    import re
    import tempfile
    from pathlib import Path

    from tinyformer.errors import TinyformerError
    from tinyformer.lm import publish
    from tinyformer.train.rundir import Run

    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*|[A-Za-z0-9][\w.-]*", args.repo):
        raise TinyformerError(f"--repo {args.repo!r} is not a Hub repository name; use USER/NAME")
    run = Run(args.ckpt, args.which)
    token = publish.find_token(args.token)  # before the export: no token, no work
    model = run.load_model()
    with tempfile.TemporaryDirectory(prefix="tinyformer-push-") as tmp:
        folder = publish.export_run(run, model, Path(tmp) / "export", repo=args.repo)
        files = sorted(p.name for p in folder.iterdir())
        url = publish.push_folder(folder, args.repo, token, private=args.private,
                                  message=f"Upload {run.name} ({run.checkpoint.name}) exported by tinyformer")
    print(f"pushed {run.checkpoint} to {url} ({', '.join(files)})")
    return 0
