"""``python -m bench``: run the benchmark matrix and print the tables."""

from __future__ import annotations

from bench.harness import main

raise SystemExit(main())
