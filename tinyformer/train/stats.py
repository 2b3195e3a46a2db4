"""The spread of one number over several runs (seeds) of the same settings: what the lab's best-config
re-runs, its reproduction and `tinyformer compare` report."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

SPREAD_FIELDS = ("mean", "std", "min", "max")


def spread(values: Iterable[float | None]) -> dict[str, float | None]:
    """mean, sample standard deviation (0 for one value), min and max of the values that are not None
    (each None when none is)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return dict.fromkeys(SPREAD_FIELDS)
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals)}
