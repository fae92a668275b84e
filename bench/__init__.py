"""conpool's benchmarks: ``python -m bench`` (see bench/README.md).

Every measurement runs in a fresh subprocess pinned to one core, against an
echo server in another process pinned to the other core; the runner repeats
the matrix in shuffled order and reports ratios paired within each repeat.
"""
