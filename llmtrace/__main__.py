"""``python -m llmtrace``: the ``llmtrace`` command, where the environment's scripts folder is not on PATH."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
