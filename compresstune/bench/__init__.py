"""The `compresstune bench` and `inspect` commands: the fine-tuning study (study.py; its results.md
and plot: study_results.py), training speed and memory per method (training.py), accuracy against
speed-up across runs (tradeoff.py), parameter accounting (params.py)."""
