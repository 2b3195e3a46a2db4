"""`train.precision=auto` and `train.sdpa_backend=auto` on a CPU, chosen by measurement, not by a rule.

Whether bf16 autocast beats float32, and which attention kernel is fastest, depends on the CPU (AVX512-BF16,
AMX), the model's shape and the sequence length; a fixed rule was measured slower than float32 on some
shapes. So a run times a few real training steps (forward, backward, optimizer) of a copy of its model on a
copy of its first batch for each candidate, interleaved, and keeps the fastest; float32 wins unless another
candidate is faster by a clear margin, so auto is never slower than float32 as measured. A faster candidate
is chosen only once its training agrees with float32's on that batch (10 steps from the same weights, every
loss within 1%): a kernel that computed the wrong thing on some shape would part at once. The choice is
cached per machine, torch version, thread count and shape (~/.cache/tinyformer/autotune.json), so later
runs, resumes and sweeps of the same shape use the same choice without measuring again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tinyformer.fileio import atomic_write
from tinyformer.train.optim import build_optimizer
from tinyformer.train.runtime import autocast, sdpa_backend, training_parts

Candidate = tuple[str, str]  # (precision, sdpa backend)
CPU_CANDIDATES: tuple[Candidate, ...] = (("fp32", "auto"), ("fp32", "math"), ("bf16", "auto"), ("bf16", "math"),
                                         ("bf16", "fp32"))  # bf16 with the attention kernel in float32
MARGIN = 0.03  # a candidate must beat float32 by more than this to be chosen over it
MEASURE_SECONDS = 2.0  # time spent timing steps at least (short steps get more rounds), up to MAX_ROUNDS
MAX_ROUNDS = 30
REFERENCE: Candidate = ("fp32", "auto")


def cache_path() -> Path:
    root = os.environ.get("TINYFORMER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tinyformer")
    return Path(root) / "autotune.json"


def pick_fastest(candidates: Sequence[Candidate], measure: Callable[[Candidate], float], rounds: int = 3,
                 reference: Candidate = ("fp32", "auto"), min_seconds: float = 0.0) -> tuple[Candidate, dict[str, float]]:
    """The candidate with the lowest time per step (the minimum over interleaved rounds: `rounds`, or more
    when a round takes less than `min_seconds / rounds`, so short steps are timed often enough to rise above
    the noise; at most MAX_ROUNDS); `reference` (float32, torch's kernel) stays unless the best beats it by
    more than MARGIN."""
    best: dict[Candidate, float] = {c: float("inf") for c in candidates}
    done = 0
    while done < rounds:
        round_time = 0.0
        for c in candidates:
            t = measure(c)
            best[c] = min(best[c], t)
            round_time += t
        done += 1
        if done == 1 and min_seconds > 0 and round_time > 0:
            rounds = max(rounds, min(MAX_ROUNDS, math.ceil(min_seconds / round_time)))
    fastest = min(candidates, key=lambda c: best[c])
    if reference in best and best[fastest] > best[reference] * (1 - MARGIN):
        fastest = reference
    return fastest, {f"{p}/{s}": t for (p, s), t in best.items()}


def step_timer(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
               warmup: int = 1, length_groups: int = 1) -> Callable[[Candidate], float]:
    """A function timing one training step of a private copy of `model` under a candidate (the batch split
    as a training step splits it: `tinyformer.batch.split_by_length`)."""
    work = copy.deepcopy(model).to(device).train()
    optimizer = build_optimizer(work, 1e-6, 0.0)
    parts, counts = training_parts(batch, length_groups, work.config.n_predict, device)
    parts = [{k: v.to(device) for k, v in part.items()} for part in parts]
    seen: set[Candidate] = set()

    def step(candidate: Candidate) -> float:
        precision, sdpa = candidate
        for part in parts:
            kwargs = {k: part[k] for k in ("position_ids", "attention_mask") if k in part}
            with sdpa_backend(sdpa), autocast(device, precision):
                _, loss = work(part["ids"], targets=part["targets"], return_logits=False, target_counts=counts,
                               **kwargs)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def measure(candidate: Candidate) -> float:
        if candidate not in seen:  # first calls pay for kernel selection and allocation
            for _ in range(warmup):
                step(candidate)
            seen.add(candidate)
        start = time.perf_counter()
        step(candidate)
        return time.perf_counter() - start

    return measure


AGREEMENT_STEPS = 10  # training steps from the same weights on the same batch, each candidate against float32
AGREEMENT_LR = 1e-3  # large enough that the weights move as in training, so a wrong gradient shows in the loss
AGREEMENT_TOLERANCE = 0.01  # the largest relative gap of a step's loss to float32's that a candidate may show


def loss_trajectory(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
                    candidate: Candidate, length_groups: int = 1, steps: int = AGREEMENT_STEPS,
                    lr: float = AGREEMENT_LR) -> list[float]:
    """The loss of each of `steps` training steps (AdamW at `lr`, no decay) of a private copy of `model` on
    `batch`, split into length groups as a training step splits it, under `candidate`."""
    work = copy.deepcopy(model).to(device).train()
    optimizer = build_optimizer(work, lr, 0.0)
    parts, counts = training_parts(batch, length_groups, work.config.n_predict, device)
    precision, sdpa = candidate
    losses = []
    for _ in range(steps):
        total = 0.0
        for part in parts:
            kwargs = {k: part[k].to(device) for k in ("position_ids", "attention_mask") if k in part}
            with sdpa_backend(sdpa), autocast(device, precision):
                _, loss = work(part["ids"].to(device), targets=part["targets"].to(device), return_logits=False,
                               target_counts=counts, **kwargs)
            loss.backward()
            total += loss.item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
    return losses


def disagreement(losses: Sequence[float], reference: Sequence[float]) -> float:
    """The largest relative gap between two loss trajectories (inf where either is not finite)."""
    gaps = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, reference, strict=True)]
    return max(gaps) if all(math.isfinite(g) for g in gaps) else float("inf")


def agreeing_choice(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
                    length_groups: int, candidates: Sequence[Candidate], times: dict[str, float],
                    fastest: Candidate) -> tuple[Candidate, dict[str, float]]:
    """The fastest candidate whose training agrees with float32's on this batch (the loss of each of
    AGREEMENT_STEPS steps within AGREEMENT_TOLERANCE), and the relative gaps measured. Float32 with either
    kernel computes the same function to rounding (2e-7 of the gradient) and is taken unchecked. Candidates are tried
    from `fastest` down to float32 with torch's kernel (the reference, which needs no check), none slower
    than float32 by the margin;
    where float32 is not among them (precision=bf16 was asked for), the closest to float32 when none agrees."""
    if fastest[0] == "fp32":
        return fastest, {}
    reference = loss_trajectory(model, batch, device, REFERENCE, length_groups)
    gaps: dict[str, float] = {}
    ranked = sorted(candidates, key=lambda c: times[f"{c[0]}/{c[1]}"])
    limit = times.get("fp32/auto", float("inf")) * (1 - MARGIN)  # slower than this: float32 wins anyway
    for c in ranked[ranked.index(fastest):]:
        if c == REFERENCE or (REFERENCE in candidates and times[f"{c[0]}/{c[1]}"] > limit):
            return REFERENCE, gaps
        if c[0] == "fp32":  # float32 with another kernel: the same computation (tests/unit/train/test_autotune.py)
            return c, gaps
        gap = disagreement(loss_trajectory(model, batch, device, c, length_groups), reference)
        gaps[f"{c[0]}/{c[1]}"] = gap
        if gap <= AGREEMENT_TOLERANCE:
            return c, gaps
    return min(ranked, key=lambda c: gaps[f"{c[0]}/{c[1]}"]), gaps


def _machine() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        name = ""
    return f"{platform.machine()} {name or platform.processor()}".strip()


def cache_key(model_config: dict[str, Any], batch: dict[str, torch.Tensor]) -> str:
    key = {"machine": _machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "model": model_config, "batch": {k: list(v.shape) for k, v in sorted(batch.items())}}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def choose(model: torch.nn.Module, model_config: dict[str, Any], batch: dict[str, torch.Tensor],
           precision: str, sdpa: str, device: torch.device, length_groups: int = 1) -> tuple[str, str, dict[str, Any]]:
    """(precision, sdpa backend, report): `auto` settings replaced by the fastest measured candidate."""
    candidates = [c for c in CPU_CANDIDATES if precision in ("auto", c[0])
                  and (sdpa in ("auto", c[1]) or (sdpa == "fp32" and c == ("fp32", "auto")))]  # float32: the same
    if len(candidates) == 1:
        return (*candidates[0], {"source": "given"})
    path = cache_path()
    key = cache_key({**model_config, "_ask": [precision, sdpa], "_groups": length_groups,
                     "_agreement": [AGREEMENT_STEPS, AGREEMENT_LR, AGREEMENT_TOLERANCE]}, batch)
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache.get(key), dict) and "choice" in cache[key]:
        entry = cache[key]
        return (*entry["choice"], {"source": f"cached measurement ({path})", **entry})
    with torch.random.fork_rng(devices=[]):  # measuring must not move the training RNG
        fastest, times = pick_fastest(candidates, step_timer(model, batch, device, length_groups=length_groups),
                                      min_seconds=MEASURE_SECONDS)
        choice, gaps = agreeing_choice(model, batch, device, length_groups, candidates, times, fastest)
    entry = {"choice": list(choice), "seconds_per_step": times, "loss_gap_to_fp32": gaps}
    cache[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            json.dump(cache, f, indent=1)
    except OSError:
        pass  # an unwritable cache only costs a measurement next time
    return (*choice, {"source": "measured", **entry})
