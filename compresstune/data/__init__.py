"""Task data: GLUE (glue.py) and the user's own files (files.py) read into TaskData (task.py);
tokenising and batching (batching.py); GLUE metrics (metrics.py). The lowest layer: imports
nothing of compresstune but errors."""
