"""Training engine: `tinyformer.train.trainer` (Trainer, train_lm), optim (build_optimizer), schedule (lr_at),
sampler (token-file batch sources), checkpoint, metrics, plot, distributed. Kept import-free so the CLI starts fast."""
