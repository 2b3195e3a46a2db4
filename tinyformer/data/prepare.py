"""`data prepare`: split a corpus into train/validation text, train the tokenizer on the training part, and
encode both parts into token files, in one step. The output directory appears whole or not at all:

    OUT/tokenizer/   OUT/train.bin + train.json   OUT/val.bin + val.json   OUT/prepare.json
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinyformer.data.corpora import CORPORA, EOT
from tinyformer.data.encode import encode_files
from tinyformer.data.prepare_text import SplitWriter
from tinyformer.data.sources import text_documents
from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_dir, require_file, sha256_file
from tinyformer.tokenizer import Tokenizer, train_bpe


def write_story_split(source: Path, work: Path, val_fraction: float) -> tuple[int, int]:
    """Split a file on `<|endoftext|>` into whole stories (blank ones dropped); the last `val_fraction` of them
    (at least one, not all) are validation. Each story, followed by its end marker, goes through `data prepare
    text`'s document reader and split writer to WORK/train.txt or WORK/val.txt; the file is read twice (to
    count the stories, then to write them), so memory holds one story, not the file.
    Returns (n train stories, n val stories)."""
    n = sum(1 for story in text_documents(source, EOT) if story.strip())
    if n < 2:
        raise TinyformerError(
            f"found {n} story in the source; a TinyStories file separates stories with {EOT} lines"
        )
    n_val = min(n - 1, max(1, math.ceil(n * val_fraction)))
    writer = SplitWriter(work)
    try:
        for story in (s for s in text_documents(source, EOT) if s.strip()):
            writer.write("train" if writer.counts["train"] < n - n_val else "val", story, str(source))
    finally:
        writer.close()
    return writer.counts["train"], writer.counts["val"]


def split_chars(text: str, val_fraction: float) -> tuple[str, str]:
    """First (1 - val_fraction) of the characters for training, the rest for validation."""
    if len(text) < 2:
        raise TinyformerError("the source text is empty; nothing to prepare")
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]


def _tinystories_sources(source: Path, version: str) -> list[Path] | None:
    """The official (train, valid) files when `source` is a download directory, else None."""
    if not source.is_dir():
        return None
    names = [f.name for f in CORPORA["tinystories"].versions[version]]
    paths = [source / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TinyformerError(
            f"{source} lacks {', '.join(missing)}; run `tinyformer data download tinystories --version {version}` "
            "or pass --source FILE.txt"
        )
    return paths


def prepare(
    corpus: str,
    source: str | Path,
    out: str | Path,
    *,
    vocab_size: int | None = None,
    val_fraction: float = 0.1,
    version: str = "v2",
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build OUT from `source` (a text file, or for TinyStories a directory of downloaded files)."""
    if corpus not in ("tinystories", "shakespeare"):
        raise TinyformerError(f"unknown corpus {corpus!r}; choose tinystories or shakespeare")
    if not 0.0 < val_fraction < 1.0:
        raise TinyformerError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    source, out = Path(source), Path(out)
    if not source.exists():
        raise TinyformerError(f"source {source} does not exist; download it first or pass --source PATH")
    if out.exists() and any(out.iterdir()) and not force:
        raise TinyformerError(f"output {out} already exists; pass --force to rebuild it")
    record: dict[str, Any] = {"corpus": corpus, "source": str(source), "val_fraction": val_fraction}
    with atomic_dir(out, force=True) as tmp:
        work = tmp / "work"
        work.mkdir()
        if corpus == "shakespeare":
            text = _read_text(source)
            train_text, val_text = split_chars(text, val_fraction)
            inputs = _write_parts(work, train_text, val_text)
            tokenizer = Tokenizer([], [])  # char level: the 256 byte tokens, no merges (the text is ASCII)
            record["split"] = f"first {1 - val_fraction:.0%} of characters / last {val_fraction:.0%}"
        else:
            official = _tinystories_sources(source, version)
            if official is not None:
                inputs = official
                record["split"] = "the dataset's own train / valid files"
            else:
                require_file(source, "source")
                n_train, n_val = write_story_split(source, work, val_fraction)
                inputs = [work / "train.txt", work / "val.txt"]
                record["split"] = f"by story: {n_train} train, {n_val} validation (the last {val_fraction:.0%})"
            size = vocab_size or 10_000
            log(f"training a {size}-token BPE tokenizer on {inputs[0].name} ...")
            tokenizer = train_bpe([inputs[0]], size, special_tokens=[EOT])
        tokenizer.save(tmp / "tokenizer")
        record["tokenizer_fingerprint"] = tokenizer.fingerprint
        record["sources"] = [{"path": str(p), "sha256": sha256_file(p)} for p in ([source] if source.is_file() else inputs)]
        source_sha = sha256_file(source) if source.is_file() else None
        for name, path in zip(("train", "val"), inputs):
            meta = encode_files(tokenizer, [path], tmp / f"{name}.bin", allowed_special="all",
                                log=lambda text: log(text.replace(str(tmp), str(out))))  # the path it will have
            record[f"{name}_tokens"] = meta["n_tokens"]
            if path.parent == work:  # name the real source, not the temporary split file
                meta["sources"] = [{"path": str(source), "sha256": source_sha, "n_bytes": meta["n_bytes"],
                                    "part": f"{name} split of the source"}]
                (tmp / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for path in work.iterdir():
            path.unlink()
        work.rmdir()
        (tmp / "prepare.json").write_text(json.dumps(record, indent=1) + "\n")
    log(f"prepared {out}: {record['train_tokens']:,} train / {record['val_tokens']:,} val tokens ({record['split']})")
    return record


def _read_text(source: Path) -> str:
    """A source text file as a string; one line naming the first bad byte when it is not UTF-8."""
    try:
        return require_file(source, "source").read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TinyformerError(f"source {source} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                              f"{exc.start}); convert it to UTF-8 first") from None
    except OSError as exc:
        raise TinyformerError(f"cannot read source {source}: {exc.strerror}") from None


def _write_parts(work: Path, train_text: str, val_text: str) -> list[Path]:
    paths = [work / "train.txt", work / "val.txt"]
    for path, text in zip(paths, (train_text, val_text)):
        path.write_text(text, encoding="utf-8")
    return paths
