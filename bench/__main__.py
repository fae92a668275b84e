"""``python -m bench``: run the benchmark matrix and print the table."""

from __future__ import annotations

from bench.runner import main

raise SystemExit(main())
