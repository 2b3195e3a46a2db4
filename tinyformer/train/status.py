"""A run's status: the one list of what summary.json's "status" can say. After one of DONE the run does not
train again; a paused one (train.stop_at_step) or one stopped by a signal continues from its checkpoint when
started again. Kept apart from `rundir` so that a verb can know them (and its exit code) without importing torch."""

import signal
from typing import Any

FINISHED, SOLVED, EARLY_STOPPED = "finished", "solved", "early_stopped"
BUDGET_SPENT, TARGET_REACHED = "budget_spent", "target_reached"  # train.budget, train.target_loss
PAUSED, INTERRUPTED = "paused", "interrupted"
DONE = (FINISHED, SOLVED, EARLY_STOPPED, BUDGET_SPENT, TARGET_REACHED)
STATUSES = (*DONE, PAUSED, INTERRUPTED)


def exit_code(summary: dict[str, Any]) -> int:
    """The process exit code for a run's summary: 0 when it ended or paused, 128 + the signal number when a
    signal stopped it after saving (130 for SIGINT, 143 for SIGTERM), so a scheduler can tell them apart."""
    if summary.get("status") != INTERRUPTED:
        return 0
    try:
        return 128 + int(signal.Signals[summary.get("signal") or "SIGINT"])
    except KeyError:
        return 128 + int(signal.SIGINT)
