"""Learners (arXiv 2208.02070) and the fine-tuning baselines they are compared with."""
