"""Measurement primitives: the latency protocol and machine description (latency.py), the
resource monitor that samples a stage's RSS (monitor.py), training tensor memory (memory.py);
markdown tables for the reports of measurements (markdown.py)."""
