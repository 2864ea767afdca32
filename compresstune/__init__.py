"""compresstune: compress a BERT-family model, fine-tune it with Learners, ship ONNX."""

__version__ = "0.1.0"
