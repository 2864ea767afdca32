"""Models: the architecture table (arch.py: module names per model family, skipped attention),
model resolution and loading (resolve.py), input names and example inputs (inputs.py), and
the on-disk artifact format every stage reads and writes (artifacts.py)."""
