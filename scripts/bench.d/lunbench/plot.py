"""The plot (gnuplot) of every row's ratio to the raw file."""

import math
import os
import shutil
import subprocess
import tempfile
from .common import ENV, human_size
from .report import row_value
from .rows import ROWS
from .tests import TEST_IDS, TEST_UNIT


def plot(results, png):
    rows = [r for r in ROWS if r in results["rows"] and not results["rows"][r].get("error")]
    if not rows or not shutil.which("gnuplot", path=ENV["PATH"]):
        return "no data or no gnuplot"
    work = tempfile.mkdtemp(prefix="lunfs-bench-plot.")
    try:
        return plot_in(results, png, rows, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def plot_in(results, png, rows, work):
    bw_tests = [t for t in TEST_IDS if TEST_UNIT[t] == "MB/s" and t in results["tests"]]
    io_tests = [t for t in TEST_IDS if TEST_UNIT[t] == "IOPS" and t in results["tests"]]

    def write_dat(name, tests, scale):
        path = os.path.join(work, name)
        with open(path, "w") as f:
            for t in tests:
                vals = []
                for r in rows:
                    v = row_value(results, r, t)
                    vals.append("?" if v is None else f"{v / scale:.3f}")
                f.write(f'"{t}" ' + " ".join(vals) + "\n")
        return path
    bw = write_dat("bw.dat", bw_tests, 1)
    io = write_dat("iops.dat", io_tests, 1000)
    colors = ["#555555", "#e69f00", "#f0c674", "#0072b2", "#9ecae1", "#56b4e9", "#009e73", "#cc79a7"]
    assert len(colors) >= len(ROWS), "a colour for every row"
    color_of = dict(zip(ROWS, colors))
    cfg = results["config"]
    title = (f"lunfs vs raw file vs qemu-storage-daemon qcow2 - {human_size(cfg['size_bytes'])} "
             f"files, median of {cfg['reps']}{' (quick run)' if cfg['quick'] else ''}")
    n, gap = len(rows), 1
    io_values = [row_value(results, r, t) for r in rows for t in io_tests]
    io_values = [v / 1000 for v in io_values if v]
    io_floor = 10 ** math.floor(math.log10(min(io_values) / 2)) if io_values else 0.1

    def plot_cmd(dat, fmt, key):
        bars, labels = [], []
        for i, r in enumerate(rows):
            title_part = f"title '{r}'" if key else "notitle"
            bars.append(f"'{dat}' using {i + 2}:xtic(1) {title_part} lc rgb '{color_of[r]}'")
            x = f"($0 + ({i} - {(n - 1) / 2}) / {n + gap})"
            c = f"${i + 2}"
            text = (f"(sprintf('{fmt}', {c}))" if fmt != "k" else
                    f"({c} >= 1 ? sprintf('%.1fk', {c}) : sprintf('%.0f', {c} * 1000))")
            labels.append(f"'{dat}' using {x}:{i + 2}:{text} "
                          "with labels rotate by 90 left offset 0,0.3 font ',8' notitle")
        return "plot " + ", ".join(bars + labels)
    script = f"""
set terminal pngcairo size 1400,1000 font 'sans,11' noenhanced
set output '{png}'
set datafile missing '?'
set style data histograms
set style histogram clustered gap {gap}
set style fill solid 0.9 border -1
set boxwidth 0.9
set grid ytics
set key at screen 0.99, screen 0.93 right top vertical
set lmargin at screen 0.07
set rmargin at screen 0.82
set multiplot layout 2,1 title "{title}" font 'sans,13'
set title 'Throughput, 1 MiB sequential: MB/s (higher is better)'
set ylabel 'MB/s'
set xrange [-0.5:{len(bw_tests) - 0.5}]
set yrange [0:*]
set offsets 0,0,graph 0.12,0
{plot_cmd(bw, '%.0f', True)}
set title '4 KiB random: thousands of IOPS, log scale (dio = O_DIRECT libaio QD16, buf = page cache, psync x 4 jobs)'
set ylabel 'kIOPS (log)'
set logscale y
set xrange [-0.5:{len(io_tests) - 0.5}]
set yrange [{io_floor}:*]
set offsets 0,0,0,0
set format y '%g'
{plot_cmd(io, 'k', False)}
unset multiplot
"""
    gp = os.path.join(work, "plot.gp")
    with open(gp, "w") as f:
        f.write(script)
    p = subprocess.run(["gnuplot", gp], env=ENV, capture_output=True, text=True)
    if p.returncode != 0:
        return f"gnuplot failed: {p.stderr.strip()[-300:]}"
    return None
