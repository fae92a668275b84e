"""``python bench/run.py``: the same as ``python -m bench`` from the repository root."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, sys.path[0] is bench/ itself: make the package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.runner import main

    raise SystemExit(main())
