#!/usr/bin/env python3
"""Side-by-side benchmark of lunfs disks against a raw file and qemu-storage-daemon (qcow2).

Run through scripts/bench (which installs the tools and asks for root); scripts/bench-ab runs
this file of each tree it compares. Every row is a file of the same size on the same file
system; every test runs --reps times and the median is kept. Writes a table to stdout,
results JSON to bench-results/, a plot to docs/bench.png and regenerates docs/BENCHMARKS.md.

The parts live in the package lunbench next to this file: tests.py (the tests), rows/ (the
rows and their set-up), extras.py (figures beside the table), report.py, plot.py and docs.py
(the output), run.py (one run, start to end).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lunbench.run import main  # noqa: E402

if __name__ == "__main__":
    main()
