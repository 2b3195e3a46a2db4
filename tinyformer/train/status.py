"""A run's status: the one list of what summary.json's "status" can say. After one of DONE the run does not
train again; a paused one (train.stop_at_step) or one stopped by a signal continues from its checkpoint when
started again. Kept apart from `rundir` so that a verb can know them without importing torch."""

FINISHED, SOLVED, EARLY_STOPPED = "finished", "solved", "early_stopped"
BUDGET_SPENT, TARGET_REACHED = "budget_spent", "target_reached"  # train.budget, train.target_loss
PAUSED, INTERRUPTED = "paused", "interrupted"
DONE = (FINISHED, SOLVED, EARLY_STOPPED, BUDGET_SPENT, TARGET_REACHED)
STATUSES = (*DONE, PAUSED, INTERRUPTED)
