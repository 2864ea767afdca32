"""``python -m compresstune.cli``."""

from . import main

main()
