"""Compression: structured pruning (torch-pruning) and distillation into a smaller student."""
