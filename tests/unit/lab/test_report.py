"""The lab report (tinyformer.lab.report): our accuracies beside the published ones, as markdown, CSV and a heatmap."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from tinyformer.lab.report import Entry, load_published, render_csv, render_markdown, write_report

ROOT = Path(__file__).resolve().parents[3]


def test_report_puts_published_numbers_beside_ours(tmp_path: Path):
    published = load_published(ROOT / "docs" / "published-results.yaml")
    assert published["UR"]["ape"]["51-100"] == pytest.approx(0.988)
    entries = [
        Entry("UR", "ape", {"1-50": 1.0, "51-100": 0.9, "101-150": 0.5}, {"1-50": 0.0, "51-100": 0.05, "101-150": 0.1}, 3),
        Entry("UR", "alibi", {"1-50": 1.0, "51-100": 0.7, "101-150": 0.25}),
    ]
    md = render_markdown(entries, published)
    lines = md.splitlines()
    assert lines[0] == "| task | scheme | runs | 1-50 | 51-100 | 101-150 | published 51-100 | published 101-150 |"
    assert lines[2] == "| UR | ape | 3 | 1.000 ± 0.000 | 0.900 ± 0.050 | 0.500 ± 0.100 | 0.988 | 0.926 |"
    assert lines[3] == "| UR | alibi | 1 | 1.000 | 0.700 | 0.250 | - | - |"
    rows = list(csv.DictReader(io.StringIO(render_csv(entries, published))))
    assert len(rows) == 6
    ape_mid = next(r for r in rows if r["scheme"] == "ape" and r["bin"] == "51-100")
    assert (ape_mid["accuracy"], ape_mid["published"], ape_mid["runs"]) == ("0.9000", "0.9880", "3")
    paths = write_report(entries, tmp_path, published)
    assert paths["heatmap"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "0.988" in paths["markdown"].read_text()
