"""What a run keeps across an interruption, as Stateful pieces (`state_dict` / `load_state_dict` each) that the
checkpointer collects into one trainer state: the counters and evaluation outcome (`TrainState`), the
optimizer, the fp16 loss scaler and every process's RNG. The batch source and the schedule are pieces too
(their own classes); `tinyformer.train.checkpoint.Checkpointer` writes and reads them all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from tinyformer.train import rundir
from tinyformer.train.distributed import DistInfo, all_gather_objects
from tinyformer.train.runtime import rng_state, set_rng_state
from tinyformer.train.status import DONE


class Stateful(Protocol):
    """A piece of the trainer state: what it holds as plain values and tensors, and how it takes them back."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


class DamagedState(ValueError):
    """A loaded value the checkpoint itself holds wrongly (not a foreign run): said with the file to delete."""


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


@dataclass
class TrainState:
    """The run's counters and what its evaluations decided so far. Its entries sit at the top of the trainer
    state (the other pieces under their names); `outcome()` is the part an evaluation changes after the
    checkpoint of its step was written."""

    step: int = 0
    tokens: int = 0
    examples: int = 0
    elapsed: float = 0.0  # training time in seconds, evaluations and checkpoints excluded
    best_score: float | None = None
    best_checkpoint: str | None = None
    evals_without_improvement: int = 0
    eval_pending: bool = False  # the checkpoint of this step was written before its evaluation finished
    status: str | None = None  # set when a saved run ended (one of DONE)

    def advance(self, tokens: int, examples: int, seconds: float) -> None:
        """One optimizer step done."""
        self.step += 1
        self.tokens += tokens
        self.examples += examples
        self.elapsed += seconds

    def outcome(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_checkpoint": self.best_checkpoint,
                "evals_without_improvement": self.evals_without_improvement, "eval_pending": self.eval_pending,
                "status": self.status}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens, "examples": self.examples, "elapsed": self.elapsed,
                **self.outcome()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counters = [state["step"], state["tokens"], state["examples"], state["evals_without_improvement"]]
        if not all(map(_count, counters)):
            raise ValueError(f"counters {counters} are not counts")
        best, best_checkpoint = state["best_score"], state.get("best_checkpoint")
        if not (best_checkpoint is None or rundir.STEP_NAME.fullmatch(str(best_checkpoint))):
            raise ValueError(f"best checkpoint {best_checkpoint!r}")
        self.step, self.tokens, self.examples, self.evals_without_improvement = counters
        self.elapsed = float(state["elapsed"])
        self.best_score = None if best is None or not math.isfinite(float(best)) else float(best)
        self.best_checkpoint = best_checkpoint
        self.eval_pending = state["eval_pending"] is True
        self.status = state["status"] if state["status"] in DONE else None


class OptimizerState:
    """The optimizer's state in full, keyed by parameter name whatever the sharding (FSDP gathers it)."""

    # what each kind of optimizer keeps per parameter (`tinyformer.train.optim`)
    KEYS = {"AdamW": {"step", "exp_avg", "exp_avg_sq"}, "Muon": {"momentum_buffer"}}

    def __init__(self, module: torch.nn.Module, optimizer: Any) -> None:
        # Muon + AdamW hold their state in two torch optimizers; torch keys both by parameter name
        self.module, self.optimizers = module, getattr(optimizer, "optimizers", [optimizer])

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.module, self._optimizers(),
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        groups = [[{k: v for k, v in g.items() if k != "params"} for g in o.param_groups] for o in self.optimizers]
        set_optimizer_state_dict(self.module, self._optimizers(), state,
                                 options=StateDictOptions(full_state_dict=True))
        for optimizer, fresh in zip(self.optimizers, groups):
            self._check(optimizer, fresh)

    def _optimizers(self) -> Any:
        """One optimizer as itself (the state of an AdamW run as it always was), several as a list."""
        return self.optimizers[0] if len(self.optimizers) == 1 else self.optimizers

    def _check(self, optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
        """Make the loaded state one this run can step with: the hyperparameters of its groups are the
        config's (`groups`, from before loading; the settings check made sure they did not change), and every
        parameter's moments are finite tensors shaped and typed like it."""
        if len(groups) != len(optimizer.param_groups):
            raise ValueError("optimizer groups")
        keys = self.KEYS.get(type(optimizer).__name__, set())
        for group, fresh in zip(optimizer.param_groups, groups):
            group.update(fresh)
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                if state and not keys <= set(state):
                    raise ValueError(f"optimizer state keys {sorted(state)}")
                for name, value in state.items():
                    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or (
                            name != "step" and (value.shape != p.shape or value.dtype != p.dtype)):
                        raise ValueError(f"optimizer {name} does not fit a parameter of shape {tuple(p.shape)}")
                    if not torch.isfinite(value).all():
                        raise DamagedState(f"the optimizer's {name} holds NaN or infinite values")


class ScalerState:
    """The fp16 loss scaler (None when the run does not use one)."""

    def __init__(self, scaler: torch.amp.GradScaler) -> None:
        self.scaler = scaler

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler.is_enabled() else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.scaler.load_state_dict(state)


class RNGState:
    """The Python, NumPy, torch (and CUDA) RNG states of every process, in rank order (dropout differs per
    process); each process takes back its own (the first, when a run resumes on more processes)."""

    def __init__(self, info: DistInfo) -> None:
        self.info = info

    def state_dict(self) -> list[dict[str, Any]]:
        return all_gather_objects(rng_state(), self.info)

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        set_rng_state(states[self.info.rank] if self.info.rank < len(states) else states[0])
