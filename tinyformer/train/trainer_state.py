"""What the Trainer keeps across an interruption: finding the checkpoint to resume from, refusing changed
settings, loading and checking a saved state, and writing checkpoints (each followed by its evaluation's
outcome). A mixin of `Trainer`, kept apart so the training loop reads in one sitting.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from tinyformer.errors import TinyformerError
from tinyformer.train import checkpoint as ckpt
from tinyformer.train import rundir
from tinyformer.train.distributed import all_gather_objects, all_reduce_max, barrier
from tinyformer.train.rundir import DONE
from tinyformer.train.runtime import rng_state, set_rng_state


def find_resume(run_dir: Path, resume: str) -> tuple[Path | None, str | None]:
    """(the checkpoint a run in `run_dir` continues from, or None; a note when it fell back from the one
    index.json names), by `resume` = never | auto | must."""
    latest, note = rundir.resume_point(run_dir)
    if resume == "never":
        if latest is not None:
            raise TinyformerError(
                f"run_dir {run_dir} already has checkpoints; pass resume=auto to continue it or choose a new run_dir"
            )
        return None, None
    if resume == "must" and latest is None:
        raise TinyformerError(f"nothing to resume: {run_dir} has no checkpoint; drop --resume to start")
    return latest, note


def check_settings(saved: Any, settings: dict[str, Any], run_dir: Path) -> None:
    """Refuse a resume whose config changes a setting that decides the result (model, data, optimizer,
    schedule, batch, seed, task, evaluation sets), naming it; how long and where the run goes on may change."""
    if not isinstance(saved, dict):
        raise TinyformerError(f"the checkpoint state of {run_dir} has no settings; it is corrupt")
    for key in [*settings, *(k for k in saved if k not in settings)]:
        was, now = saved.get(key), settings.get(key)
        if was != now:
            raise TinyformerError(
                f"cannot resume {run_dir}: {key} was {was!r} when it trained, the config says {now!r} "
                "(a resume may change how long and where it runs, not what it computes); use the run's "
                "config.yaml or start a new run_dir"
            )


class TrainerState:
    """Checkpoint and resume methods of `Trainer` (which sets every attribute they use)."""

    # ------------------------------------------------------------ resume

    def _load_state(self, state: dict[str, Any], where: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            set_optimizer_state_dict(
                self.raw, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True)
            )
            self._check_optimizer(groups, where)
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.train_source.load_state_dict(state["sampler"])
            rngs = state["rng"]
            set_rng_state(rngs[self.rt.info.rank] if self.rt.info.rank < len(rngs) else rngs[0])
            counters = [state["step"], state["tokens"], state["examples"], state["evals_without_improvement"]]
            if not all(type(c) is int and c >= 0 for c in counters) or rundir.step_name(state["step"]) != where.name:
                raise ValueError(f"counters {counters} do not fit {where.name}")
            self.step, self.tokens, self.examples, self.evals_without_improvement = counters
            self.elapsed = float(state["elapsed"])
            best = state["best_score"]
            self.best_score = None if best is None or not math.isfinite(float(best)) else float(best)
            self.best_checkpoint = state.get("best_checkpoint")
            if not (self.best_checkpoint is None or rundir.STEP_NAME.fullmatch(str(self.best_checkpoint))):
                raise ValueError(f"best checkpoint {self.best_checkpoint!r}")
            self.eval_pending = state["eval_pending"] is True
            self.status = state["status"] if state["status"] in DONE else None
            schedule = state.get("schedule") or {}
            if schedule.get("kept") or (self.status == "finished" and self.cfg.max_steps > self.step):
                # a finished run extended to a larger max_steps keeps the horizon its schedule completed
                self.horizon, self.horizon_kept = int(schedule["total"]), True
                if self.status == "finished" and self.cfg.max_steps > self.step:
                    self.status, self.extended_from = None, self.step
        except TinyformerError:
            raise
        except Exception as exc:  # a damaged or foreign state: one line, never a traceback
            raise TinyformerError(
                f"checkpoint state of {where} does not fit this run ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'bad value'}); it is corrupt or from another run"
            ) from None

    def _check_optimizer(self, groups: list[dict[str, Any]], where: Path) -> None:
        """Make the loaded optimizer state one this run can step with: the hyperparameters of its groups are
        the config's (`groups`, from before loading; the settings check made sure they did not change), and
        every parameter's moments are finite tensors shaped and typed like it."""
        if len(groups) != len(self.optimizer.param_groups):
            raise ValueError("optimizer groups")
        for group, fresh in zip(self.optimizer.param_groups, groups):
            group.update(fresh)
            for p in group["params"]:
                state = self.optimizer.state.get(p, {})
                if state and not {"step", "exp_avg", "exp_avg_sq"} <= set(state):
                    raise ValueError(f"optimizer state keys {sorted(state)}")
                for name, value in state.items():
                    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or (
                            name != "step" and (value.shape != p.shape or value.dtype != p.dtype)):
                        raise ValueError(f"optimizer {name} does not fit a parameter of shape {tuple(p.shape)}")
                    if not torch.isfinite(value).all():
                        raise TinyformerError(
                            f"{where / rundir.STATE_TENSORS_FILE}: the optimizer's {name} holds NaN or infinite "
                            f"values; the checkpoint is damaged: to resume from the previous checkpoint delete {where}"
                        )

    # ------------------------------------------------------------ checkpoints

    def _full_model_for_save(self) -> torch.nn.Module | None:
        """The plain module with full weights on rank 0 (None on other ranks); under FSDP the shards are
        gathered into a fresh CPU copy, so the file has clean, unsharded names."""
        if self.cfg.parallel != "fsdp" or not self.rt.info.enabled:
            return self.raw if self.rt.info.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from tinyformer.model import ModelConfig, Transformer

        full = get_model_state_dict(self.raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.rt.info.is_main:
            return None
        with torch.device("cpu"):
            copy = Transformer(ModelConfig.from_dict(self.model_config))
        copy.load_state_dict(full)
        return copy

    def _outcome(self, status: str | None = None) -> dict[str, Any]:
        """The plain fields an evaluation can change after its step's checkpoint was written."""
        return {
            "best_score": self.best_score,
            "best_checkpoint": self.best_checkpoint,
            "evals_without_improvement": self.evals_without_improvement,
            "eval_pending": self.eval_pending,
            "status": status,
        }

    def save(self, status: str | None = None) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        optim_state = get_optimizer_state_dict(
            self.raw, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        rngs = all_gather_objects(rng_state(), self.rt.info)
        model = self._full_model_for_save()
        broken = model is not None and not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())
        if self.rt.info.enabled:
            broken = all_reduce_max([float(broken)], self.rt.info, self.rt.device)[0] > 0
        if broken:  # never a checkpoint nothing can continue from
            raise self.diverged("its weights hold NaN or infinite values")
        if self.rt.info.is_main:
            state = {
                "step": self.step,
                "tokens": self.tokens,
                "examples": self.examples,
                "elapsed": self.elapsed,
                "optimizer": optim_state,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "sampler": self.train_source.state_dict(),
                "rng": rngs,
                "schedule": {
                    "schedule": self.cfg.schedule, "lr": self.cfg.lr, "min_lr": self.cfg.final_lr,
                    "warmup": self.cfg.warmup, "total": self.horizon, "kept": self.horizon_kept,
                },
                "model_config": self.model_config,
                "seq_len": self.seq_len,
                "settings": self.settings,
                **self._outcome(status),
            }
            self.last_saved = ckpt.save_checkpoint(self.run_dir, self.step, model, state,
                                                   keep_last=self.cfg.keep_last)
        barrier(self.rt.info)

    def diverged(self, what: str, step: int | None = None) -> TinyformerError:
        """The one line after a divergence (the weights of `self.step` broke; `step`: the step to name): how to
        go on from the last good checkpoint with a lower rate. A resume may not change train.lr (it decides
        the result), so its weights start a new run_dir (train.init_from)."""
        # the weights of self.step broke (their loss, evaluation or values): a checkpoint before them, the best
        before = [p for p in rundir.step_dirs(self.run_dir)
                  if rundir.is_complete(p) and p.name < rundir.step_name(self.step)]
        good = next((p for p in before if p.name == self.best_checkpoint), before[-1] if before else None)
        lower = f"train.lr={self.cfg.lr / 10:g}"
        if good is None or "task.name" in self.settings:  # the lab starts its runs from scratch
            how = (f"start again in a new run_dir with a lower learning rate ({lower}) or a longer train.warmup"
                   + (f" (the last good checkpoint is {good})" if good else ""))
        else:
            how = (f"restart from the last good checkpoint with a lower learning rate: the same command (without "
                   f"--resume) with train.init_from={good} {lower} run_dir=NEW_RUN_DIR (its weights, a fresh "
                   f"optimizer), or raise train.warmup")
        return TinyformerError(f"training diverged at step {self.step if step is None else step} ({what}); {how}")

    def _record_outcome(self, score: float | None, status: str | None) -> None:
        """After the evaluation of a saved step: the best checkpoint in index.json, then the step's state."""
        if self.rt.info.is_main and self.last_saved is not None and self.last_saved.name == rundir.step_name(self.step):
            index = ckpt.record_score(self.run_dir, self.last_saved.name, score, self.cfg.keep_last)
            self.best_checkpoint = index.get("best")
            ckpt.update_state(self.last_saved, self._outcome(status))
        barrier(self.rt.info)

    def _repair_index(self) -> None:
        """After a resume that fell back to the newest complete checkpoint: point index.json at it again
        (and at the best checkpoint its state remembers, when that still exists)."""
        index = {"latest": self.resumed_from.name}
        best = self.best_checkpoint
        if best and rundir.is_complete(self.run_dir / rundir.CHECKPOINTS / best) and self.best_score is not None:
            index.update(best=best, best_score=self.best_score)
        from tinyformer.fileio import atomic_write

        with atomic_write(self.run_dir / rundir.CHECKPOINTS / rundir.INDEX_FILE) as f:
            json.dump(index, f, indent=1)
