"""One benchmark run: the command line, the context (work directory, pool), each row measured
test by test, the extras, then the report."""

import argparse
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from .common import BenchError, CLEANUP, GiB, MiB, REPO, human_size, is_mountpoint, log, median, on_signal, parse_size, proc_status_kib
from .docs import load_average, machine_description, write_docs
from .extras import map_bytes_per_mib, mount_many, pool_figures, snapshot_latency
from .lunfs import Lunfs, REMOVALS
from .plot import plot
from .report import evaluate_targets, extras_lines, table_lines, target_lines
from .rows import LUNFS_ROWS, ROWS, make_row
from .rows.lunfs import LunfsRow
from .snapshot_under_writes import snapshot_under_writes
from .tests import Runner, TEST_IDS, TEST_UNIT


class Context:
    def __init__(self, args):
        self.args = args
        self.runner = Runner(args)
        self.workdir = os.path.realpath(tempfile.mkdtemp(prefix="lunfs-bench.",
                                                         dir=os.path.realpath(args.dir)))
        CLEANUP.dirs.append(self.workdir)
        self.pool = os.path.join(self.workdir, "pool")
        self.pool_mnt = os.path.join(self.workdir, "mnt")
        self.lunfs = Lunfs(self)
        self.pool_mounted = False
        self.status_samples = []        # lunfs status --json taken along the way

    def drive_size_bytes(self):
        # Sparse drive files: generous logical size costs nothing. RAID 1 doubles a disk, and
        # a snapshot row can hold two copies; the 16 GiB snapshot test needs 16 GiB at RAID 5.
        need = max(2 * self.args.size, GiB)
        if not self.args.skip_16g:
            need = max(need, 4 * GiB)
        return (need + GiB - 1) // GiB * GiB

    def ensure_pool(self):
        if self.pool_mounted and self.lunfs.alive(self.pool_mnt):
            return
        if is_mountpoint(self.pool_mnt):            # a dead daemon's mount: clear it
            log("the pool's mount is dead; remounting")
            self.lunfs.kill_all("dead mount")
        self.pool_mounted = False
        opts = ["--create", "--drives", "8", "--drive-size", human_size(self.drive_size_bytes())]
        if os.path.isdir(self.pool) and os.listdir(self.pool):
            opts = []
        opts += self.args.mount_options.split()
        self.lunfs.mount(self.pool, self.pool_mnt, opts)
        self.pool_mounted = True

    def sample_status(self, label):
        try:
            s = pool_figures(self.lunfs.status_json(self.pool))
            self.status_samples.append({"when": label, "status": s})
        except (BenchError, ValueError) as e:
            self.status_samples.append({"when": label, "error": str(e)})


def measure_row(ctx, row, results):
    args = ctx.args
    entry = {"tests": {}, "error": None}
    results["rows"][row.name] = entry
    log(f"[{row.name}] setting up ({human_size(args.size)})")
    try:
        entry["fill_MBps"] = row.setup()
    except (BenchError, OSError) as e:
        entry["error"] = f"setup: {e}"
        log(f"[{row.name}] {entry['error']}")
        try:
            row.teardown()
        except (BenchError, OSError):
            pass
        return
    tests = [t for t in TEST_IDS if t in args.tests]
    for t in tests:
        entry["tests"][t] = {"unit": TEST_UNIT[t], "reps": [], "MBps_reps": [], "errors": []}
    try:
        for rep in range(args.reps):
            for t in tests:
                e = entry["tests"][t]
                try:
                    try:
                        path = row.path_for(t)
                        value, mbps = ctx.runner.run_test(t, path)
                    finally:
                        row.after(t)
                    e["reps"].append(value)
                    e["MBps_reps"].append(mbps)
                    shown = f"{value:.0f} {TEST_UNIT[t]}"
                except (BenchError, OSError) as err:
                    e["errors"].append(f"rep {rep + 1}: {err}")
                    shown = f"failed: {err}"
                    if isinstance(row, LunfsRow) and "timed out" in str(err):
                        ctx.lunfs.kill_all(f"{row.name} {t}: {err}")
                log(f"[{row.name}] {t} {rep + 1}/{args.reps}: {shown}")
        if isinstance(row, LunfsRow):
            entry["raid"] = row.raid_level()
            if row.snapshot_ms:
                entry["snapshot_mkdir_ms"] = row.snapshot_ms
            ctx.sample_status(f"after {row.name}")
    finally:
        try:
            row.teardown()
        except (BenchError, OSError) as e:
            log(f"[{row.name}] teardown: {e}")
    for t in tests:
        e = entry["tests"][t]
        e["median"] = median(e["reps"])
        e["MBps_median"] = median(e["MBps_reps"])


def parse_args():
    ap = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Side-by-side benchmark of lunfs disks against a raw file and "
                    "qemu-storage-daemon over qcow2 (and a qcow2 overlay). Run as root.")
    ap.add_argument("--size", type=parse_size, default=None,
                    help="size of every test file (default 4G; 1G with --quick)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per test (default 3)")
    ap.add_argument("--runtime", type=int, default=None,
                    help="seconds per random-I/O test (default 15; 3 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="short run: 1G files, 3 s random tests, no 16 GiB snapshot test")
    ap.add_argument("--skip-16g", action="store_true",
                    help="skip the mkdir-snapshot latency with 16 GiB written")
    ap.add_argument("--rows", default=",".join(ROWS),
                    help=f"comma-separated rows to run (default all: {','.join(ROWS)})")
    ap.add_argument("--tests", default=",".join(TEST_IDS),
                    help=f"comma-separated tests (default all: {','.join(TEST_IDS)})")
    ap.add_argument("--no-extras", action="store_true",
                    help="skip the lunfs snapshot-latency, memory and mount-time figures")
    ap.add_argument("--mount-disks", type=int, default=250,
                    help="disks in the mount-time pool (default 250)")
    ap.add_argument("--mount-snapshots", type=int, default=3,
                    help="snapshots per disk in the mount-time pool (default 3)")
    ap.add_argument("--dir", default="/var/tmp",
                    help="where the work directory (files, pools, mounts) goes; its file "
                         "system is the one measured (default /var/tmp)")
    ap.add_argument("--lunfs", help="use this lunfs binary instead of building one")
    ap.add_argument("--mount-options", default="",
                    help="more arguments for the lunfs mount of the measured pool, for instance "
                         "'-o no_writeback_cache'")
    ap.add_argument("--no-build", action="store_true",
                    help="do not run swift build; use the binary under --scratch-path")
    ap.add_argument("--scratch-path", default=".build",
                    help="swift build --scratch-path, relative to the repo (default .build)")
    ap.add_argument("--results-dir", default=str(REPO / "bench-results"),
                    help="where the results JSON goes (default bench-results/)")
    ap.add_argument("--png", default=str(REPO / "docs" / "bench.png"),
                    help="where the plot goes (default docs/bench.png)")
    ap.add_argument("--no-docs", action="store_true",
                    help="do not regenerate docs/BENCHMARKS.md and docs/bench.png")
    ap.add_argument("--from-json", metavar="FILE",
                    help="measure nothing: print the table and rewrite the plot and docs from "
                         "a results file of an earlier run")
    ap.add_argument("--docs", action="store_true",
                    help="regenerate them even for a partial run (--rows, --tests, "
                         "--no-extras); by default only a run of everything does")
    args = ap.parse_args()
    if args.size is None:
        args.size = GiB if args.quick else 4 * GiB
    if args.runtime is None:
        args.runtime = 3 if args.quick else 15
    if args.quick:
        args.skip_16g = True
    if args.size % MiB or args.size < 16 * MiB:
        ap.error("--size must be a multiple of 1 MiB and at least 16M")
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    args.tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    for r in args.rows:
        if r not in ROWS:
            ap.error(f"unknown row {r!r}")
    for t in args.tests:
        if t not in TEST_IDS:
            ap.error(f"unknown test {t!r}")
    return args


def check_space(args, workdir):
    st = os.statvfs(workdir)
    free_bytes = st.f_bavail * st.f_frsize
    # Peak: the qcow2 overlay row holds base + overlay; a lunfs RAID 1 disk is two copies; the
    # 16 GiB snapshot test holds 16 GiB at RAID 5 (x 1.25).
    need_bytes = 3 * args.size + 2 * GiB
    if any(r.startswith("lunfs") for r in args.rows):
        need_bytes = max(need_bytes, int(2.6 * args.size) + 2 * GiB)
        if not args.skip_16g and not args.no_extras:
            need_bytes = max(need_bytes, 21 * GiB)
    if free_bytes < need_bytes:
        log(f"warning: {free_bytes / GiB:.1f} GiB free in {workdir}, the run may need "
            f"{need_bytes / GiB:.1f} GiB")
    return free_bytes


def main():
    args = parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            results = json.load(f)
        report(results, args, save_json=False)
        return
    if os.geteuid() != 0:
        sys.exit("bench: run as root (drop_caches and FUSE mounts)")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    os.makedirs(args.dir, exist_ok=True)
    ctx = Context(args)
    started = datetime.datetime.now().astimezone()
    started_s = time.monotonic()
    stamp = started.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    results = {
        "date": started.strftime("%Y-%m-%d %H:%M %Z").strip(),
        "config": {"size_bytes": args.size, "reps": args.reps, "runtime_s": args.runtime,
                   "quick": args.quick, "rows": args.rows, "workdir": ctx.workdir,
                   "skip_16g": args.skip_16g, "drive_size_bytes": ctx.drive_size_bytes(),
                   "mount_disks": args.mount_disks, "mount_snapshots": args.mount_snapshots,
                   "no_extras": args.no_extras, "mount_options": args.mount_options},
        "json_name": f"bench-{stamp}.json",
        "tests": args.tests,
        "rows": {},
        "extras": {},
    }
    try:
        results["machine"] = machine_description(ctx.workdir)
        results["machine"]["loadavg_start"] = load_average()
        check_space(args, ctx.workdir)
        fstype = results["machine"]["fstype"]
        if fstype in ("tmpfs", "ramfs"):
            log(f"warning: {args.dir} is on {fstype}: the figures will not be a disk's")
        lunfs_wanted = any(r in LUNFS_ROWS for r in args.rows) or not args.no_extras
        if lunfs_wanted:
            try:
                ctx.lunfs.build()
                log(f"lunfs binary: {ctx.lunfs.binary}; smoke test in a tiny pool")
                ctx.lunfs.smoke_test()
            except (BenchError, OSError) as e:
                if isinstance(e, OSError):
                    e = f"smoke test: {e}"
                ctx.lunfs.error = str(e)
                results["lunfs_error"] = str(e)
                print(f"lunfs: not available: {e}", flush=True)

        for name in args.rows:
            if name in LUNFS_ROWS and ctx.lunfs.error:
                results["rows"][name] = {"tests": {}, "error": f"lunfs: not available: "
                                                              f"{ctx.lunfs.error}"}
                continue
            row = make_row(ctx, name)
            if name in LUNFS_ROWS and not ctx.pool_mounted:
                try:
                    ctx.ensure_pool()
                    pid = ctx.lunfs.daemons.get(ctx.pool_mnt)
                    results["extras"]["daemon_rss_KiB_idle"] = (
                        proc_status_kib(pid, "VmRSS") if pid else None)
                except (BenchError, OSError) as e:
                    results["rows"][name] = {"tests": {}, "error": f"pool mount: {e}"}
                    continue
            measure_row(ctx, row, results)
            if name == "lunfs-after-snapshot":
                ms = results["rows"][name].get("snapshot_mkdir_ms")
                results["extras"]["snapshot_mkdir_ms_row"] = median(ms or [])

        ex = results["extras"]
        if not ctx.lunfs.error and not args.no_extras:
            for extra, key, tag in ((snapshot_latency, "snapshot_error", "snapshot"),
                                    (snapshot_under_writes, "midrun_error", "midrun")):
                try:
                    extra(ctx, ex)
                except (BenchError, OSError) as e:
                    ex[key] = str(e)
                    log(f"[{tag}] {e}")
        if ctx.pool_mounted:
            pid = ctx.lunfs.daemons.get(ctx.pool_mnt)
            if pid:
                ex["daemon_rss_KiB_loaded"] = proc_status_kib(pid, "VmRSS")
                ex["daemon_hwm_KiB_loaded"] = proc_status_kib(pid, "VmHWM")
            ctx.lunfs.unmount(ctx.pool_mnt)
            ctx.pool_mounted = False
            if not ctx.status_samples or all("error" in s for s in ctx.status_samples):
                ctx.sample_status("after unmount")     # perhaps status needs the pool unlocked
            shutil.rmtree(ctx.pool, ignore_errors=True)
        if not ctx.lunfs.error and not args.no_extras:
            try:
                mount_many(ctx, ex)
            except (BenchError, OSError) as e:
                ex["mount_error"] = str(e)
                log(f"[mount] {e}")

        # Map memory: the status sample with the most data allocated.
        best, why = None, "lunfs not available" if ctx.lunfs.error else "no lunfs status"
        samples = [s for s in ctx.status_samples if "status" in s]
        if "mount_pool_status" in ex:
            samples.append({"when": "1000-node pool", "status": ex["mount_pool_status"]})
        best_used = -1
        for s in samples:
            v, how = map_bytes_per_mib(s["status"])
            used = s["status"].get("usedBytes", 0) if isinstance(s["status"], dict) else 0
            if v is not None and (best is None or used > best_used):
                best, best_used = v, used
                why = f"{how}, {s['when']}, {used / GiB:.1f} GiB allocated"
            elif v is None and best is None:
                why = how
        errs = [s["error"] for s in ctx.status_samples if "error" in s]
        if not samples and errs:
            why = f"lunfs status --json failed: {errs[-1]}"
            ex["status_error"] = errs[-1]
        ex["map_bytes_per_MiB"] = best
        ex["map_bytes_per_MiB_source"] = why
        results["status_samples"] = ctx.status_samples
        if ctx.lunfs.hangs:
            ex["lunfs_hangs"] = ctx.lunfs.hangs
        if REMOVALS["broken"]:
            ex["removals_skipped_after"] = REMOVALS["broken"]
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); cleaning up")
        CLEANUP.run()
        sys.exit(130)
    finally:
        # Stop every mount and daemon before reporting; the work dir stays for the plot.
        for mp in list(ctx.lunfs.daemons):
            try:
                ctx.lunfs.unmount(mp)
            except BenchError:
                pass

    try:
        results["elapsed_s"] = round(time.monotonic() - started_s, 1)
        results["machine"]["loadavg_end"] = load_average()
        report(results, args, save_json=True)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); cleaning up")
        sys.exit(130)
    finally:
        CLEANUP.run()


def report(results, args, save_json):
    """The table on stdout, the results JSON, the plot and docs/BENCHMARKS.md."""
    cfg = results["config"]
    results["targets"] = evaluate_targets(results)
    out = []
    out.append(f"lunfs benchmark, {results['date']}: {human_size(cfg['size_bytes'])} files, "
               f"median of {cfg['reps']}, random tests {cfg['runtime_s']} s"
               + (" (quick)" if cfg["quick"] else ""))
    m = results["machine"]
    out.append(f"machine: {m['cpu']}, {m['memory']}, kernel {m['kernel']}, {m['device']} "
               f"{m['filesystem']}")
    out.append("")
    out += table_lines(results, markdown=False)
    out.append("")
    out += extras_lines(results)
    out.append("")
    out.append("targets:")
    out += target_lines(results, markdown=False)
    for r, e in results["rows"].items():
        if e.get("error") and not e["error"].startswith("lunfs: not available"):
            out.append(f"{r}: {e['error']}")
    print("\n".join(out), flush=True)

    if save_json:
        os.makedirs(args.results_dir, exist_ok=True)
        json_path = os.path.join(args.results_dir, results["json_name"])
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1, default=str)
        print(f"\nresults: {json_path}")
    complete = (cfg["rows"] == ROWS and results["tests"] == TEST_IDS
                and not cfg.get("no_extras", False))
    if not args.no_docs and not complete and not args.docs:
        print("docs: not regenerated (a partial run; --docs forces it)")
    elif not args.no_docs:
        png = os.path.realpath(args.png)
        os.makedirs(os.path.dirname(png), exist_ok=True)
        plot_error = plot(results, png)
        if plot_error:
            log(f"plot: {plot_error}")
        else:
            print(f"plot: {png}")
        docs = REPO / "docs" / "BENCHMARKS.md"
        png_rel = os.path.relpath(png, docs.parent)
        docs.write_text(write_docs(results, png_rel, plot_error) + "\n")
        print(f"docs: {docs}")
