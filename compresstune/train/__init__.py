"""Training: the one loop every training stage uses (loop.py), its options (options.py),
resumable checkpoints (checkpoint.py), and dev-set inference and metrics (evaluate.py)."""
