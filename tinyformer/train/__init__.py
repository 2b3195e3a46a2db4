"""The engine both kinds of run share: config schema (`config`), runtime (`runtime`), start (`start`),
the loop (`trainer`), checkpoints (`checkpoint`), the run directory (`rundir`), metrics, optimizer and
schedule, evaluation protocol, distributed. Kept import-free so the CLI starts fast."""
