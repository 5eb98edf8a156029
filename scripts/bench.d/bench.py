#!/usr/bin/env python3
"""Side-by-side benchmark of lunfs disks against a raw file and qemu-storage-daemon (qcow2).

Run through scripts/bench (which installs the tools and asks for root). Every row is a file of
the same size on the same file system; every test runs --reps times and the median is kept.
Writes a table to stdout, results JSON to bench-results/, a plot to docs/bench.png and
regenerates docs/BENCHMARKS.md.
"""

import argparse
import datetime
import errno
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
GiB = 1 << 30

# (id, column label, unit, writes?)  Units: "MB/s" (10^6 bytes per second) or "IOPS".
TESTS = [
    ("dd-write", "dd wr", "MB/s", True),
    ("dd-read", "dd rd", "MB/s", False),
    ("seq-write", "seq wr", "MB/s", True),
    ("seq-read", "seq rd", "MB/s", False),
    ("randread-direct", "rr dio", "IOPS", False),
    ("randwrite-direct", "rw dio", "IOPS", True),
    ("randread-buffered", "rr buf", "IOPS", False),
    ("randwrite-buffered", "rw buf", "IOPS", True),
]
TEST_IDS = [t[0] for t in TESTS]
TEST_UNIT = {t[0]: t[2] for t in TESTS}
TEST_WRITES = {t[0]: t[3] for t in TESTS}
TEST_LABEL = {t[0]: t[1] for t in TESTS}

# What each test runs; FILE and SIZE are filled in. Printed into docs/BENCHMARKS.md.
TEST_DESCRIPTION = {
    "dd-write": "dd if=/dev/zero of=FILE bs=1M count=SIZE/1M conv=notrunc,fsync",
    "dd-read": "drop caches; dd if=FILE of=/dev/null bs=1M",
    "seq-write": "fio rw=write bs=1M ioengine=libaio direct=1 iodepth=16 end_fsync=1",
    "seq-read": "drop caches; fio rw=read bs=1M ioengine=libaio direct=1 iodepth=16",
    "randread-direct": "drop caches; fio rw=randread bs=4k ioengine=libaio direct=1 iodepth=16, RUNTIME s",
    "randwrite-direct": "fio rw=randwrite bs=4k ioengine=libaio direct=1 iodepth=16 end_fsync=1, RUNTIME s",
    "randread-buffered": "drop caches; fio rw=randread bs=4k ioengine=psync numjobs=4, RUNTIME s",
    "randwrite-buffered": "fio rw=randwrite bs=4k ioengine=psync numjobs=4 end_fsync=1, RUNTIME s",
}

ROWS = ["raw", "qsd-qcow2", "qsd-qcow2-overlay",
        "lunfs-raid0", "lunfs-raid1", "lunfs-raid5", "lunfs-after-snapshot"]
LUNFS_ROWS = [r for r in ROWS if r.startswith("lunfs-")]
RAID_ROWS = {"lunfs-raid0": 0, "lunfs-raid1": 1, "lunfs-raid5": 5}
# Share of raw bandwidth a RAID level can pass on to writes (the targets' "data fraction").
DATA_FRACTION = {0: 1.0, 1: 0.5, 5: 0.8}

ENV = dict(os.environ, LC_ALL="C", LANG="C")
ENV["PATH"] = ENV.get("PATH", "/usr/bin:/bin") + ":/opt/swift/usr/bin:/usr/sbin:/sbin"


# ----------------------------------------------------------------------------------------
# Small helpers

def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 4G, 512M)")
    scale = {"": 1, "k": 1 << 10, "m": MiB, "g": GiB, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def human_size(size_bytes):
    for unit, scale in (("T", 1 << 40), ("G", GiB), ("M", MiB), ("K", 1 << 10)):
        if size_bytes >= scale and size_bytes % scale == 0:
            return f"{size_bytes // scale}{unit}"
    return str(size_bytes)


class BenchError(Exception):
    pass


def run(cmd, timeout=600, check=True, capture=True):
    """Runs cmd (a list); returns CompletedProcess. Raises BenchError on failure or timeout."""
    try:
        p = subprocess.run(cmd, env=ENV, timeout=timeout, text=True,
                           stdout=subprocess.PIPE if capture else None,
                           stderr=subprocess.PIPE if capture else None)
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout} s: {shlex.join(cmd)}")
    except OSError as e:
        raise BenchError(f"{cmd[0]}: {e}")
    if check and p.returncode != 0:
        err = (p.stderr or p.stdout or "").strip().splitlines()
        tail = err[-1] if err else f"exit status {p.returncode}"
        if len(tail) > 160:
            tail = tail[:157] + "..."
        raise BenchError(f"{Path(cmd[0]).name} failed: {tail}")
    return p


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# Paths here are absolute and free of symlinks already (the work dir is resolved once):
# resolving them again would stat a mount point, which blocks if its FUSE daemon hangs.

def is_mountpoint(path):
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4].encode().decode("unicode_escape")
                if mp == path:
                    return True
    except OSError:
        pass
    return False


def mounts_under(directory):
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == directory or mp.startswith(directory + "/"):
                found.append(mp)
    return found


def abort_fuse_connection(mountpoint):
    """Fails every pending and future request of a FUSE mount (its daemon may be hung or
    unknown): writes 1 to /sys/fs/fuse/connections/<minor>/abort."""
    minor = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4].encode().decode("unicode_escape") == mountpoint:
                minor = fields[2].split(":")[1]
    if minor is None:
        return
    conn = "/sys/fs/fuse/connections"
    if not os.path.exists(os.path.join(conn, minor)):
        subprocess.run(["mount", "-t", "fusectl", "none", conn], env=ENV,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with open(os.path.join(conn, minor, "abort"), "w") as f:
            f.write("1")
    except OSError:
        pass


def proc_start_ticks(pid):
    """Start time of a process (field 22 of /proc/PID/stat): with the pid, its identity."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def wait_pid_gone(pid, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def stop_pid(pid, timeout_s=60):
    """SIGTERM, wait, then SIGKILL a process this script started."""
    if not pid_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not wait_pid_gone(pid, timeout_s):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_pid_gone(pid, 10)


def proc_status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def truncate_file(path, size_bytes):
    """What `truncate -s SIZE path` does: open (creating if needed), then ftruncate."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, size_bytes)
    finally:
        os.close(fd)


class Guard:
    """Runs file-system calls on a lunfs mount with a time limit. A daemon that stops answering
    would leave this script blocked in the kernel for ever; instead, after timeout_s the daemon
    is killed (which fails the blocked call with ENOTCONN) and the call raises BenchError."""

    def __init__(self):
        self.on_hang = None     # set by Lunfs: kills its daemons

    def call(self, what, fn, *args, timeout_s=60):
        box = {}

        def body():
            try:
                box["value"] = fn(*args)
            except BaseException as e:      # handed over to the caller below
                box["error"] = e
        t = threading.Thread(target=body, daemon=True)
        t.start()
        t.join(timeout_s)
        if t.is_alive():
            if self.on_hang:
                self.on_hang(f"{what}: no answer in {timeout_s} s")
            t.join(30)
            raise BenchError(f"{what}: no answer in {timeout_s} s (lunfs daemon killed)")
        if "error" in box:
            raise box["error"]
        return box.get("value")


GUARD = Guard()


def fs(what, fn, *args, timeout_s=60):
    """GUARD.call with the path (first argument) in the message."""
    return GUARD.call(f"{what} {args[0] if args else ''}".strip(), fn, *args, timeout_s=timeout_s)


def timed_mkdir_ms(path):
    t0 = time.perf_counter()
    os.mkdir(path)
    return (time.perf_counter() - t0) * 1000


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ----------------------------------------------------------------------------------------
# Cleanup: everything this run mounts or starts is registered here and undone on exit.

class Cleanup:
    def __init__(self):
        self.fuse_mounts = []      # paths
        self.pids = {}             # processes we started (qsd, lunfs daemons): pid -> start
        self.dirs = []             # temp dirs to remove last

    def add_mount(self, path):
        if path not in self.fuse_mounts:
            self.fuse_mounts.append(path)

    def add_pid(self, pid):
        if pid:
            self.pids[pid] = proc_start_ticks(pid)

    def forget_pid(self, pid):
        self.pids.pop(pid, None)

    def run(self):
        for mp in reversed(self.fuse_mounts):
            if is_mountpoint(mp):
                subprocess.run(["fusermount3", "-u", "-z", mp], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.fuse_mounts.clear()
        for pid, start in self.pids.items():
            if start is not None and proc_start_ticks(pid) == start:    # not a reused pid
                stop_pid(pid, timeout_s=15)
        self.pids.clear()
        for d in reversed(self.dirs):
            left = mounts_under(d) if os.path.isdir(d) else []
            for mp in left:
                subprocess.run(["umount", "-l", mp], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            left = mounts_under(d) if os.path.isdir(d) else []
            if left:
                log(f"not removing {d}: still mounted: {', '.join(left)}")
                continue
            shutil.rmtree(d, ignore_errors=True)
        self.dirs.clear()


CLEANUP = Cleanup()


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ----------------------------------------------------------------------------------------
# The measurements: dd and fio runs, parsed.

class Runner:
    def __init__(self, args):
        self.args = args
        self.size_bytes = args.size
        self.size_mib = args.size // MiB

    def seq_timeout_s(self):
        # Generous: 2 MB/s would be pathological, and a hung FUSE daemon must not hang the run.
        return max(300, self.size_bytes // (2 * 1000 * 1000))

    def dd(self, src, dst, write):
        cmd = ["dd", f"if={src}", f"of={dst}", "bs=1M", f"count={self.size_mib}"]
        if write:
            cmd.append("conv=notrunc,fsync")
        p = run(cmd, timeout=self.seq_timeout_s())
        m = re.search(r"^(\d+) bytes .* copied, ([\d.e+-]+) s", p.stderr, re.M)
        if not m:
            raise BenchError(f"cannot parse dd output: {p.stderr.strip()[-200:]}")
        moved_bytes, seconds = int(m.group(1)), float(m.group(2))
        if moved_bytes != self.size_bytes:
            raise BenchError(f"dd moved {moved_bytes} bytes, expected {self.size_bytes}")
        return moved_bytes / seconds / 1e6

    def fio(self, path, name, extra, timeout_s):
        cmd = ["fio", f"--name={name}", f"--filename={path}", f"--size={self.size_bytes}",
               "--allow_file_create=0", "--fallocate=none", "--invalidate=1",
               "--group_reporting", "--output-format=json"] + extra
        p = run(cmd, timeout=timeout_s)
        text = p.stdout
        start = text.find("{")
        if start < 0:
            raise BenchError(f"fio printed no JSON: {(p.stderr or text).strip()[-200:]}")
        try:
            job = json.loads(text[start:])["jobs"][0]
        except (ValueError, KeyError, IndexError) as e:
            raise BenchError(f"cannot parse fio JSON: {e}")
        if job.get("error"):
            raise BenchError(f"fio job error {job['error']}")
        return job

    def run_test(self, test, path):
        """Returns (value in the test's unit, MB/s)."""
        rt = str(self.args.runtime)
        rand_timeout = self.args.runtime + 300
        if test in ("dd-read", "seq-read", "randread-direct", "randread-buffered"):
            drop_caches()
        else:
            os.sync()
        if test == "dd-write":
            v = self.dd("/dev/zero", path, write=True)
            return v, v
        if test == "dd-read":
            v = self.dd(path, "/dev/null", write=False)
            return v, v
        if test in ("seq-write", "seq-read"):
            rw = "write" if test == "seq-write" else "read"
            extra = [f"--rw={rw}", "--bs=1M", "--ioengine=libaio", "--direct=1", "--iodepth=16"]
            if rw == "write":
                extra.append("--end_fsync=1")     # the time includes reaching the disk
            job = self.fio(path, test, extra, self.seq_timeout_s())
            v = job[rw]["bw_bytes"] / 1e6
            if job[rw]["io_bytes"] < self.size_bytes:
                raise BenchError(f"fio moved only {job[rw]['io_bytes']} bytes")
            return v, v
        rw = "read" if "read" in test else "write"
        if test.endswith("-direct"):
            extra = ["--ioengine=libaio", "--direct=1", "--iodepth=16"]
        else:
            extra = ["--ioengine=psync", "--direct=0", "--numjobs=4"]
        if rw == "write":
            extra.append("--end_fsync=1")
        extra += [f"--rw=rand{rw}", "--bs=4k", "--time_based", f"--runtime={rt}",
                  "--norandommap", "--randrepeat=0"]
        job = self.fio(path, test, extra, rand_timeout)
        return job[rw]["iops"], job[rw]["bw_bytes"] / 1e6

    def fill(self, path):
        """Writes the whole file once with non-zero data (fio's default buffers): not measured.
        Returns MB/s of that first write, kept as information."""
        os.sync()
        job = self.fio(path, "fill", ["--rw=write", "--bs=1M", "--ioengine=psync",
                                      "--end_fsync=1"], self.seq_timeout_s())
        return job["write"]["bw_bytes"] / 1e6


# ----------------------------------------------------------------------------------------
# Rows. Each row gives the path of its file for a test (re-creating a snapshot or overlay
# first when the test must see first writes after a snapshot) and cleans up after itself.

class Row:
    name = "?"

    def setup(self):
        raise NotImplementedError

    def path_for(self, test):
        raise NotImplementedError

    def after(self, test):
        pass

    def teardown(self):
        pass


class RawRow(Row):
    name = "raw"

    def __init__(self, ctx):
        self.ctx = ctx
        self.path = os.path.join(ctx.workdir, "raw.img")

    def setup(self):
        with open(self.path, "wb") as f:
            f.truncate(self.ctx.runner.size_bytes)
        return self.ctx.runner.fill(self.path)

    def path_for(self, test):
        return self.path

    def teardown(self):
        if os.path.exists(self.path):
            os.unlink(self.path)


class Qsd:
    """One qemu-storage-daemon exporting a qcow2 image as a FUSE file."""

    def __init__(self, image, export_path, tag):
        self.image = image
        self.export_path = export_path
        self.tag = tag
        self.pid = None

    def start(self):
        with open(self.export_path, "a"):
            pass     # the FUSE export mounts over an existing regular file
        pidfile = self.export_path + ".pid"
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        CLEANUP.add_mount(self.export_path)
        run(["qemu-storage-daemon",
             "--blockdev", f"driver=file,node-name={self.tag}-file,filename={self.image}",
             "--blockdev", f"driver=qcow2,node-name={self.tag},file={self.tag}-file",
             "--export", f"type=fuse,id={self.tag}-export,node-name={self.tag},"
                         f"mountpoint={self.export_path},writable=on",
             "--pidfile", pidfile, "--daemonize"], timeout=120)
        with open(pidfile) as f:
            self.pid = int(f.read().strip())
        CLEANUP.add_pid(self.pid)
        if not is_mountpoint(self.export_path):
            raise BenchError(f"qemu-storage-daemon did not mount {self.export_path}")

    def stop(self):
        if self.pid:
            stop_pid(self.pid, timeout_s=120)
            CLEANUP.forget_pid(self.pid)
            self.pid = None
        if is_mountpoint(self.export_path):
            run(["fusermount3", "-u", "-z", self.export_path], check=False)


class QsdRow(Row):
    def __init__(self, ctx, overlay):
        self.ctx = ctx
        self.overlay = overlay
        self.name = "qsd-qcow2-overlay" if overlay else "qsd-qcow2"
        w = ctx.workdir
        tag = "ovl" if overlay else "img"
        self.base = os.path.join(w, f"{tag}-base.qcow2")
        self.image = os.path.join(w, f"{tag}-top.qcow2") if overlay else self.base
        self.export = os.path.join(w, f"{tag}.export")
        self.qsd = Qsd(self.image, self.export, tag)

    def create_overlay(self):
        if os.path.exists(self.image):
            os.unlink(self.image)
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", self.base, "-F", "qcow2",
             self.image])

    def setup(self):
        size = str(self.ctx.runner.size_bytes)
        run(["qemu-img", "create", "-q", "-f", "qcow2", self.base, size])
        base_qsd = Qsd(self.base, self.export, "base") if self.overlay else self.qsd
        base_qsd.start()
        fill_mbps = self.ctx.runner.fill(self.export)
        if self.overlay:
            base_qsd.stop()
            self.create_overlay()
            self.qsd.start()
        return fill_mbps

    def path_for(self, test):
        if self.overlay:
            # Reads too see a fresh overlay: every block comes through the backing file.
            self.qsd.stop()
            self.create_overlay()
            self.qsd.start()
        return self.export

    def teardown(self):
        self.qsd.stop()
        for p in (self.image, self.base, self.export, self.export + ".pid"):
            if os.path.exists(p):
                os.unlink(p)


# ----------------------------------------------------------------------------------------
# lunfs: the binary, mounts, the daemon.

class Lunfs:
    def __init__(self, ctx):
        self.ctx = ctx
        self.binary = None
        self.error = None          # "not available" reason
        self.daemons = {}          # mountpoint -> pid
        self.mounts = []           # every mount point this run used
        self.hangs = []            # what hung, for the report
        GUARD.on_hang = self.kill_all

    def kill_all(self, why):
        """The daemon stopped answering: kill it so that blocked calls return, and unmount."""
        log(f"lunfs hung ({why}); killing its daemon")
        self.hangs.append(why)
        for mp, pid in list(self.daemons.items()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_pid_gone(pid, 10)
            CLEANUP.forget_pid(pid)
            del self.daemons[mp]
        for mp in self.mounts:
            if is_mountpoint(mp):
                abort_fuse_connection(mp)      # for a daemon whose pid we never found
                subprocess.run(["fusermount3", "-u", "-z", mp], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def alive(self, mountpoint):
        if not is_mountpoint(mountpoint):
            return False
        try:
            GUARD.call(f"stat {mountpoint}", os.stat, mountpoint, timeout_s=20)
            return True
        except (BenchError, OSError):
            return False

    def build(self):
        args = self.ctx.args
        if args.lunfs:
            self.binary = os.path.realpath(args.lunfs)
            if not os.access(self.binary, os.X_OK):
                raise BenchError(f"{args.lunfs} is not an executable")
            return
        scratch = os.path.join(REPO, args.scratch_path)
        if not args.no_build:
            if not shutil.which("swift", path=ENV["PATH"]):
                raise BenchError("swift not found (PATH or /opt/swift/usr/bin)")
            log(f"building lunfs: swift build -c release --scratch-path {args.scratch_path}")
            buildlog = os.path.join(self.ctx.workdir, "swift-build.log")
            with open(buildlog, "w") as f:
                p = subprocess.run(["swift", "build", "-c", "release", "--product", "lunfs",
                                    "--scratch-path", scratch], cwd=REPO, env=ENV,
                                   stdout=f, stderr=subprocess.STDOUT)
            if p.returncode != 0:
                os.makedirs(args.results_dir, exist_ok=True)
                shutil.copy(buildlog, os.path.join(args.results_dir, "swift-build.log"))
                with open(buildlog) as f:
                    lines = [l.strip() for l in f if "error:" in l]
                first = lines[0] if lines else "see swift build output"
                raise BenchError(f"swift build failed: {first.replace(str(REPO) + '/', '')}")
        binary = os.path.join(scratch, "release", "lunfs")
        if not os.access(binary, os.X_OK):
            raise BenchError(f"no binary at {binary}")
        self.binary = binary

    def cmd(self, *argv, timeout=120, check=True):
        return run([self.binary, *argv], timeout=timeout, check=check)

    def pid_from_pool(self, pool):
        """lunfs writes its daemon's pid to POOL/lunfs.pid (when it does, that is the answer)."""
        try:
            with open(os.path.join(pool, "lunfs.pid")) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
        except OSError:
            return None
        return pid if exe == os.path.realpath(self.binary) else None

    def find_daemon(self, mountpoint):
        """The pid of the lunfs process serving mountpoint: its executable is the lunfs binary
        and its command line names the mount point."""
        binary = os.path.realpath(self.binary)
        candidates = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            except OSError:
                continue
            if exe.removesuffix(" (deleted)") != binary and not any(
                    os.path.realpath(a) == binary for a in argv[:2]):
                continue
            named = mountpoint in argv
            candidates.append((0 if named else 1, pid))
        candidates.sort()
        return candidates[0][1] if candidates else None

    def mount(self, pool, mountpoint, options=()):
        os.makedirs(mountpoint, exist_ok=True)
        CLEANUP.add_mount(mountpoint)
        if mountpoint not in self.mounts:
            self.mounts.append(mountpoint)
        t0 = time.perf_counter()
        self.cmd("mount", pool, mountpoint, *options, timeout=300)
        elapsed_s = time.perf_counter() - t0
        deadline = time.monotonic() + 10
        while not is_mountpoint(mountpoint):
            if time.monotonic() > deadline:
                raise BenchError(f"lunfs mount returned but {mountpoint} is not mounted")
            time.sleep(0.02)
        pid = self.pid_from_pool(pool) or self.find_daemon(mountpoint)
        if pid:
            self.daemons[mountpoint] = pid
            CLEANUP.add_pid(pid)
        return elapsed_s

    def unmount(self, mountpoint):
        pid = self.daemons.pop(mountpoint, None)
        if is_mountpoint(mountpoint):
            try:
                self.cmd("unmount", mountpoint, timeout=120)
            except BenchError as e:
                log(f"lunfs unmount {mountpoint}: {e}; using fusermount3 -u")
                run(["fusermount3", "-u", mountpoint], check=False)
        if pid and not wait_pid_gone(pid, 60):
            log(f"lunfs daemon {pid} still running after unmount; stopping it")
            stop_pid(pid)
        if pid:
            CLEANUP.forget_pid(pid)
        if is_mountpoint(mountpoint):
            run(["fusermount3", "-u", "-z", mountpoint], check=False)

    def status_json(self, pool):
        p = self.cmd("status", pool, "--json", timeout=120)
        return json.loads(p.stdout)

    def smoke_test(self):
        """A tiny pool in the work dir: mount, write, read back, snapshot, unmount."""
        pool = os.path.join(self.ctx.workdir, "smoke-pool")
        mnt = os.path.join(self.ctx.workdir, "smoke-mnt")
        self.mount(pool, mnt, ["--create", "--drives", "8", "--drive-size", "256M"])

        def body():
            vm = os.path.join(mnt, "vm")
            os.mkdir(vm)
            img = os.path.join(vm, "disk.img")
            truncate_file(img, 16 * MiB)
            data = os.urandom(MiB)
            fd = os.open(img, os.O_RDWR)
            try:
                os.pwrite(fd, data, 3 * MiB)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.mkdir(os.path.join(vm, "snap"))
            with open(img, "rb") as f:
                f.seek(3 * MiB)
                back = f.read(MiB)
            if back != data:
                raise BenchError("smoke test: data read back differs from data written")
        try:
            GUARD.call("smoke test", body, timeout_s=120)
        finally:
            self.unmount(mnt)
        shutil.rmtree(pool, ignore_errors=True)


class LunfsRow(Row):
    def __init__(self, ctx, name, raid):
        self.ctx = ctx
        self.name = name
        self.raid = raid                        # None: the pool's default level
        self.snapshot = name == "lunfs-after-snapshot"
        self.disk_dir = os.path.join(ctx.pool_mnt, name.removeprefix("lunfs-"))
        self.image = os.path.join(self.disk_dir, "disk.img")
        self.snap_seq = 0
        self.current_snap = None
        self.snapshot_ms = []

    def setup(self):
        self.ctx.ensure_pool()
        fs("mkdir", os.mkdir, self.disk_dir)
        if self.raid is not None:
            fs("setxattr user.lunfs.raid", os.setxattr, self.disk_dir, "user.lunfs.raid",
               str(self.raid).encode())
        fs("truncate", truncate_file, self.image, self.ctx.runner.size_bytes)
        fill = self.ctx.runner.fill(self.image)
        if self.snapshot:
            self.snap_seq = -1
            self.take_snapshot()          # bench0: the disk's data is shared from here on
        return fill

    def raid_level(self):
        try:
            value = fs("getxattr", os.getxattr, self.disk_dir, "user.lunfs.raid", timeout_s=20)
            return int(value.decode().strip().removeprefix("raid"))
        except (OSError, ValueError, BenchError):
            return self.raid

    def take_snapshot(self):
        self.snap_seq += 1
        snap = os.path.join(self.disk_dir, f"bench{self.snap_seq}")
        os.sync()
        self.snapshot_ms.append(fs("mkdir snapshot", timed_mkdir_ms, snap))
        return snap

    def path_for(self, test):
        # A dead daemon's mount point is an empty directory: never let a test write there.
        self.ctx.ensure_pool()
        if self.snapshot and TEST_WRITES[test]:
            self.current_snap = self.take_snapshot()
        return self.image

    def after(self, test):
        if self.current_snap:
            snap, self.current_snap = self.current_snap, None
            remove_node(snap)     # it only costs space now; bench0 stays for the reads

    def teardown(self):
        remove_tree(self.disk_dir)


REMOVALS = {"broken": None}     # set to the reason when a removal hung the daemon


def remove_node(path):
    """rmdir of a lunfs disk or snapshot; unlink its image first if the file system wants it.
    Failures only cost space: logged, not raised. If a removal hangs the daemon (the guard
    kills it), later removals are skipped: the run goes on and keeps the data."""
    if REMOVALS["broken"]:
        return

    def body():
        try:
            os.rmdir(path)
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
                raise
        img = os.path.join(path, "disk.img")
        if os.path.exists(img):
            os.unlink(img)
        os.rmdir(path)
    try:
        GUARD.call(f"remove {path}", body, timeout_s=30)
    except (OSError, BenchError) as e:
        log(f"cannot remove {path}: {e}")
        if isinstance(e, BenchError) and "no answer" in str(e):
            REMOVALS["broken"] = str(e)
            log("not removing lunfs disks or snapshots for the rest of the run")


def remove_tree(path):
    """Removes a lunfs disk and the snapshots below it, deepest first."""
    def children():
        if not os.path.isdir(path):
            return None
        return [os.path.join(path, e) for e in sorted(os.listdir(path))
                if os.path.isdir(os.path.join(path, e))]
    try:
        subdirs = GUARD.call(f"list {path}", children, timeout_s=30)
    except (OSError, BenchError) as e:
        log(f"cannot list {path}: {e}")
        return
    if subdirs is None:
        return
    for sub in subdirs:
        remove_tree(sub)
    remove_node(path)


# ----------------------------------------------------------------------------------------
# The run

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


def snapshot_latency(ctx, extras):
    """mkdir-snapshot latency on a disk with 1 GiB written, then with 16 GiB written."""
    args = ctx.args
    ctx.ensure_pool()
    disk = os.path.join(ctx.pool_mnt, "latency")
    img = os.path.join(disk, "disk.img")
    fs("mkdir", os.mkdir, disk)
    fs("truncate", truncate_file, img, 16 * GiB)
    reps = max(args.reps, 5)

    def write_gib(first_gib, count_gib):
        # Non-zero bytes: lunfs allocates nothing for zeros written where nothing is mapped.
        run(["sh", "-c", f"tr '\\000' '\\377' </dev/zero | dd of={img} bs=1M seek={first_gib * 1024} "
             f"count={count_gib * 1024} iflag=fullblock conv=notrunc,fsync status=none"], timeout=3600)

    def measure(label):
        times_ms = []
        for i in range(reps):
            snap = os.path.join(disk, f"lat-{label}-{i}")
            os.sync()
            times_ms.append(fs("mkdir snapshot", timed_mkdir_ms, snap))
            remove_node(snap)
        extras[f"snapshot_mkdir_ms_{label}"] = median(times_ms)
        extras[f"snapshot_mkdir_ms_{label}_reps"] = times_ms
        log(f"[snapshot] mkdir with {label} written: {median(times_ms):.2f} ms (median of {reps})")

    try:
        log("[snapshot] writing 1 GiB")
        write_gib(0, 1)
        measure("1GiB")
        if args.skip_16g:
            extras["snapshot_mkdir_ms_16GiB"] = None
            extras["snapshot_mkdir_16GiB_note"] = "skipped: --quick or --skip-16g"
        else:
            log("[snapshot] writing 15 more GiB (dd, 1 MiB blocks)")
            write_gib(1, 15)
            ctx.sample_status("after 16 GiB written")
            measure("16GiB")
    finally:
        if ctx.lunfs.alive(ctx.pool_mnt):
            remove_tree(disk)


def mount_many(ctx, extras):
    """Mount time of a pool holding 1,000 nodes: DISKS disks x (1 + SNAPS snapshots)."""
    args = ctx.args
    lf = ctx.lunfs
    pool = os.path.join(ctx.workdir, "pool-many")
    mnt = os.path.join(ctx.workdir, "mnt-many")
    disks, snaps = args.mount_disks, args.mount_snapshots
    log(f"[mount] creating {disks} disks x {snaps} snapshots")
    lf.mount(pool, mnt, ["--create", "--drives", "8", "--drive-size", "2G"])
    t0 = time.perf_counter()
    chunk = os.urandom(64 << 10)
    for d in range(disks):
        fs("create disk", make_disk, os.path.join(mnt, f"vm{d:04d}"), chunk, snaps)
    extras["mount_pool_setup_s"] = time.perf_counter() - t0
    extras["mount_pool_nodes"] = disks * (1 + snaps)
    lf.unmount(mnt)
    times_s, rss = [], []
    for rep in range(args.reps):
        times_s.append(lf.mount(pool, mnt))
        n = fs("list", lambda p: len([e for e in os.listdir(p) if e.startswith("vm")]), mnt)
        if n != disks:
            raise BenchError(f"after remount {n} disks are listed, expected {disks}")
        pid = lf.daemons.get(mnt)
        if pid:
            rss.append(proc_status_kib(pid, "VmRSS"))
        if rep == args.reps - 1:
            try:
                extras["mount_pool_status"] = pool_figures(lf.status_json(pool))
            except (BenchError, ValueError) as e:
                extras["mount_pool_status_error"] = str(e)
        lf.unmount(mnt)
        log(f"[mount] lunfs mount of {disks * (1 + snaps)} nodes: {times_s[-1] * 1000:.0f} ms")
    extras["mount_1000_s"] = median(times_s)
    extras["mount_1000_s_reps"] = times_s
    extras["daemon_rss_KiB_1000_nodes"] = median(rss)
    shutil.rmtree(pool, ignore_errors=True)


def make_disk(vm, chunk, snaps):
    """A small disk with snaps snapshots, a little different data in each."""
    os.mkdir(vm)
    img = os.path.join(vm, "disk.img")
    truncate_file(img, 64 * MiB)
    fd = os.open(img, os.O_WRONLY)
    try:
        os.pwrite(fd, chunk, 0)
        for s in range(snaps):
            os.fsync(fd)
            os.mkdir(os.path.join(vm, f"snap{s + 1}"))
            os.pwrite(fd, chunk, (s + 1) * MiB)   # a little new data after each snapshot
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------
# Map memory from lunfs status --json (whatever names it uses, within reason)

def pool_figures(status):
    """The pool-wide numbers of a status report (not the per-disk lists, which can be long)."""
    if not isinstance(status, dict):
        raise ValueError("lunfs status --json did not print an object")
    return {k: v for k, v in status.items() if not isinstance(v, list)}


def flatten(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield prefix, obj


def norm(key):
    return re.sub(r"[^a-z0-9]", "", key.rsplit(".", 1)[-1].lower())


def map_bytes_per_mib(status):
    """(bytes of map memory per allocated MiB, how it was found) or (None, reason)."""
    pairs = list(flatten(status))
    top = [(k, v) for k, v in pairs if "[" not in k]     # pool-wide figures, not per disk
    for k, v in top:
        n = norm(k)
        if "map" in n and ("permib" in n or "perallocatedmib" in n):
            return float(v), k
    mem = [(k, v) for k, v in top if "map" in norm(k) and "mapped" not in norm(k)
           and any(w in norm(k) for w in ("memory", "mem", "ram", "rss", "bytes"))]
    alloc = [(k, v) for k, v in top if norm(k) in ("usedbytes", "allocatedbytes",
                                                     "mappedbytes", "rawusedbytes")]
    if mem and alloc:
        alloc.sort(key=lambda kv: ["usedbytes", "allocatedbytes", "mappedbytes",
                                   "rawusedbytes"].index(norm(kv[0])))
        (mk, mv), (ak, av) = mem[0], alloc[0]
        if av > 0:
            return mv / (av / MiB), f"{mk} / ({ak} / 1 MiB)"
    return None, "lunfs status --json has no map-memory figure"


# ----------------------------------------------------------------------------------------
# Report: table, targets, JSON, plot, docs

def fmt_value(v, unit):
    if v is None:
        return "-"
    if unit == "IOPS":
        return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"
    return f"{v:.0f}"


def fmt_ratio(v):
    if v is None:
        return "-"
    return f"{v:.3f}x" if v < 0.1 else f"{v:.2f}x"


def row_value(results, row, test):
    r = results["rows"].get(row)
    if not r or test not in r["tests"]:
        return None
    return r["tests"][test].get("median")


def ratio(results, row, ref, test):
    a, b = row_value(results, row, test), row_value(results, ref, test)
    if a is None or not b:
        return None
    return a / b


def comparisons(row):
    refs = ["raw", "qsd-qcow2"]
    if row == "lunfs-after-snapshot":
        refs.append("qsd-qcow2-overlay")
    return refs


def default_row(results):
    lvl = results["rows"].get("lunfs-after-snapshot", {}).get("raid")
    for s in results.get("status_samples", []):
        if lvl is None and isinstance(s.get("status"), dict):
            lvl = s["status"].get("defaultRAID")
    if lvl is None:
        lvl = 5          # 8 drives: the pool picks RAID 5 (PoolOptions.defaultRAID)
    return f"lunfs-raid{lvl}"


def evaluate_targets(results):
    ex = results["extras"]
    out = []

    def add(name, ok, detail):
        out.append({"target": name, "status": "n/a" if ok is None else
                    ("held" if ok else "missed"), "detail": detail})

    def check_all(row, ref, tests, factor):
        """ok over every test, and the worst ratio relative to the threshold."""
        worst = None
        for t in tests:
            r = ratio(results, row, ref, t)
            if r is None:
                continue
            if worst is None or r / factor < worst[0] / worst[2]:
                worst = (r, t, factor)
        if worst is None:
            return None, "no data"
        r, t, f = worst
        return r >= f, f"worst {t}: {r:.2f}x (needs >= {f:.2f}x)"

    def beyond_raw(row, ref, factor):
        """Tests where factor x ref asks for more than the raw file did in this run, scaled
        by the row's data fraction for writes: there the target is above the machine's own
        limit for that test."""
        lvl = RAID_ROWS.get(row)
        if lvl is None and row == "lunfs-after-snapshot":
            lvl = RAID_ROWS.get(default_row(results))
        out = []
        for t in TEST_IDS:
            a, b, raw = row_value(results, row, t), row_value(results, ref, t), row_value(results, "raw", t)
            if a is None or not b or not raw or a >= factor * b:
                continue
            ceiling = raw * (DATA_FRACTION.get(lvl, 1.0) if TEST_WRITES[t] else 1.0)
            if factor * b > ceiling:
                out.append(TEST_LABEL[t])
        return out

    present = [r for r in LUNFS_ROWS if r in results["rows"]]
    for row in present:
        ref = "qsd-qcow2-overlay" if row == "lunfs-after-snapshot" else "qsd-qcow2"
        ok, d = check_all(row, ref, TEST_IDS, 1.3)
        missed = [TEST_LABEL[t] for t in TEST_IDS
                  if (r := ratio(results, row, ref, t)) is not None and r < 1.3]
        if missed:
            d += f"; below in: {', '.join(missed)}"
            above = beyond_raw(row, ref, 1.3)
            if above:
                d += f"; of these, 1.3x {ref} is more than raw (x the level's data fraction for writes) gives: {', '.join(above)}"
        add(f"{row} >= 1.3x {ref} (every test)", ok, d)
    for row in present:
        if row == "lunfs-after-snapshot":
            continue
        ok, d = check_all(row, "raw", ["dd-read", "seq-read"], 0.8)
        add(f"{row} sequential reads >= 0.8x raw", ok, d)
    for row in present:
        if row not in RAID_ROWS:
            continue
        frac = DATA_FRACTION[RAID_ROWS[row]]
        ok, d = check_all(row, "raw", ["dd-write", "seq-write"], 0.8 * frac)
        add(f"{row} sequential writes >= 0.8x raw x {frac}", ok, d)
    if "lunfs-after-snapshot" in results["rows"]:
        ref = default_row(results)
        ok, d = check_all("lunfs-after-snapshot", ref, ["dd-write", "seq-write"], 0.5)
        add(f"lunfs-after-snapshot 1 MiB writes >= 0.5x {ref}", ok, d)
    a, b = ex.get("snapshot_mkdir_ms_1GiB"), ex.get("snapshot_mkdir_ms_16GiB")
    if a is None and b is None:
        add("mkdir snapshot < 20 ms", None, "no data")
    else:
        worst = max(v for v in (a, b) if v is not None)
        add("mkdir snapshot < 20 ms", worst < 20,
            f"1 GiB: {a if a is None else f'{a:.2f} ms'}, "
            f"16 GiB: {b if b is None else f'{b:.2f} ms'}".replace("None", "n/a"))
    if a is not None and b is not None and a > 0:
        add("mkdir snapshot at 16 GiB within 1.5x of 1 GiB", b <= 1.5 * a, f"{b / a:.2f}x")
    else:
        add("mkdir snapshot at 16 GiB within 1.5x of 1 GiB", None, "no data")
    m = ex.get("map_bytes_per_MiB")
    add("map memory <= 16 B per allocated MiB", None if m is None else m <= 16,
        "n/a: " + ex.get("map_bytes_per_MiB_source", "") if m is None else f"{m:.1f} B/MiB")
    t = ex.get("mount_1000_s")
    add(f"mount of {ex.get('mount_pool_nodes', 1000)} disks+snapshots < 1 s",
        None if t is None else t < 1.0, "no data" if t is None else f"{t * 1000:.0f} ms")
    return out


def table_lines(results, markdown):
    rows = [r for r in ROWS if r in results["rows"]]
    tests = [t for t in TEST_IDS if t in results["tests"]]
    head = ["row"] + [TEST_LABEL[t] for t in tests]
    units = [""] + [TEST_UNIT[t] for t in tests]
    body = []
    for r in rows:
        e = results["rows"][r]
        if e.get("error"):
            body.append([r] + [f"n/a"] * len(tests))
        else:
            body.append([r] + [fmt_value(row_value(results, r, t), TEST_UNIT[t]) for t in tests])
    ratio_rows = []
    for r in rows:
        if not r.startswith("lunfs-") or results["rows"][r].get("error"):
            continue
        for ref in comparisons(r):
            if ref not in results["rows"]:
                continue
            short = {"qsd-qcow2": "qcow2", "qsd-qcow2-overlay": "qcow2-overlay"}.get(ref, ref)
            ratio_rows.append([f"{r} / {short}"] + [fmt_ratio(ratio(results, r, ref, t))
                                                   for t in tests])
    lines = []
    if markdown:
        lines.append("| " + " | ".join(h if not u else f"{h} ({u})" for h, u in zip(head, units)) + " |")
        lines.append("|" + "---|" + "---:|" * len(tests))
        lines += ["| " + " | ".join(b) + " |" for b in body]
        if ratio_rows:
            lines += ["", "Ratios of the medians (above 1: lunfs is faster; qcow2 = qsd-qcow2):", ""]
            lines.append("| " + " | ".join(["ratio"] + head[1:]) + " |")
            lines.append("|" + "---|" + "---:|" * len(tests))
            lines += ["| " + " | ".join(b) + " |" for b in ratio_rows]
        return lines
    def table(header_rows, rows_):
        w0 = max(len(x[0]) for x in header_rows + rows_)
        widths = [w0] + [max(8, len(h) + 1) for h in head[1:]]

        def line(cells):
            return (cells[0].ljust(widths[0]) + "".join(c.rjust(w + 1) for c, w in
                                                       zip(cells[1:], widths[1:]))).rstrip()
        rule = "-" * (sum(widths) + len(widths) - 1)
        return [line(h) for h in header_rows] + [rule] + [line(b) for b in rows_]
    lines += table([head, units], body)
    if ratio_rows:
        lines += [""] + table([["ratio"] + head[1:]], ratio_rows)
    return lines


def extras_lines(results):
    ex = results["extras"]

    def ms(v):
        return "n/a" if v is None else f"{v:.2f} ms"
    lines = []
    if "lunfs_error" in results:
        lines.append(f"lunfs: not available: {results['lunfs_error']}")
    lines.append(f"mkdir snapshot, 1 GiB written:   {ms(ex.get('snapshot_mkdir_ms_1GiB'))}")
    note = ex.get("snapshot_mkdir_16GiB_note")
    lines.append(f"mkdir snapshot, 16 GiB written:  {ms(ex.get('snapshot_mkdir_ms_16GiB'))}"
                 + (f" ({note})" if note else ""))
    sm = ex.get("snapshot_mkdir_ms_row")
    if sm is not None:
        lines.append(f"mkdir snapshot, {human_size(results['config']['size_bytes'])} "
                     f"written (after-snapshot row): {ms(sm)}")
    m = ex.get("map_bytes_per_MiB")
    lines.append("map memory per allocated MiB:   " + (f"{m:.1f} B ({ex.get('map_bytes_per_MiB_source')})"
                 if m is not None else f"n/a ({ex.get('map_bytes_per_MiB_source', 'no data')})"))
    for key, label in (("daemon_rss_KiB_idle", "daemon RSS, pool just mounted"),
                       ("daemon_rss_KiB_loaded", "daemon RSS, after the lunfs rows"),
                       ("daemon_hwm_KiB_loaded", "daemon peak RSS (VmHWM), lunfs rows"),
                       ("daemon_rss_KiB_1000_nodes",
                        f"daemon RSS, {ex.get('mount_pool_nodes', 1000)}-node pool mounted")):
        v = ex.get(key)
        lines.append(f"{label + ':':<38}" + ("n/a" if v is None else f"{v / 1024:.1f} MiB"))
    t = ex.get("mount_1000_s")
    lines.append(f"lunfs mount, {ex.get('mount_pool_nodes', 1000)} disks+snapshots:   "
                 + ("n/a" if t is None else f"{t * 1000:.0f} ms"))
    for why in ex.get("lunfs_hangs", []):
        lines.append(f"  (lunfs daemon hung and was killed: {why})")
    for k in ("snapshot_error", "mount_error", "status_error"):
        if ex.get(k):
            lines.append(f"  ({k.replace('_', ' ')}: {ex[k]})")
    return lines


def target_lines(results, markdown):
    lines = []
    for t in results["targets"]:
        if markdown:
            lines.append(f"| {t['target']} | **{t['status']}** | {t['detail']} |")
        else:
            lines.append(f"  [{t['status']:>6}] {t['target']}: {t['detail']}")
    if markdown:
        lines = ["| target | status | detail |", "|---|---|---|"] + lines
    return lines


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
    colors = ["#555555", "#e69f00", "#f0c674", "#0072b2", "#56b4e9", "#009e73", "#cc79a7"]
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


def machine_description(workdir):
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        models = re.findall(r"^model name\s*:\s*(.+)$", text, re.M)
        info["cpu"] = f"{models[0] if models else 'unknown'} x {os.cpu_count()} logical CPUs"
    except OSError:
        info["cpu"] = "unknown"
    p = subprocess.run(["free", "-h"], env=ENV, capture_output=True, text=True)
    mem = [l for l in p.stdout.splitlines() if l.startswith("Mem:")]
    info["memory"] = mem[0].split()[1] + " RAM" if mem else "unknown"
    info["free_h"] = p.stdout.strip()
    info["kernel"] = os.uname().release
    try:
        osr = Path("/etc/os-release").read_text()
        m = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', osr, re.M)
        info["os"] = m.group(1) if m else "unknown"
    except OSError:
        info["os"] = "unknown"
    p = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "--target", workdir],
                       env=ENV, capture_output=True, text=True)
    parts = p.stdout.split()
    src = parts[0] if parts else ""
    info["fstype"] = parts[1] if len(parts) > 1 else "unknown"
    info["filesystem"] = (f"{parts[1]} ({parts[2]})" if len(parts) > 2 else
                          " ".join(parts[1:]) or "unknown")
    dev = os.path.basename(os.path.realpath(src)) if src.startswith("/dev/") else ""
    model = ""
    for cand in (dev, re.sub(r"p?\d+$", "", dev)):
        for attr in ("device/model", "device/vendor"):
            try:
                model = model or Path(f"/sys/block/{cand}/{attr}").read_text().strip()
            except OSError:
                pass
        try:
            rot = Path(f"/sys/block/{cand}/queue/rotational").read_text().strip()
            info["rotational"] = rot == "1"
        except OSError:
            pass
    if model == "0x1af4":
        model = "(virtio)"
    info["device"] = f"{src} {model}".strip() if src else "unknown"
    for tool, argv in (("fio", ["fio", "--version"]),
                       ("qemu", ["qemu-storage-daemon", "--version"]),
                       ("gnuplot", ["gnuplot", "--version"])):
        try:
            out = subprocess.run(argv, env=ENV, capture_output=True, text=True).stdout
            info[tool] = out.strip().splitlines()[0]
        except (OSError, IndexError):
            info[tool] = "unknown"
    p = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                       env=ENV, capture_output=True, text=True)
    info["lunfs_revision"] = p.stdout.strip() or "unknown"
    return info


def write_docs(results, png_rel, plot_error):
    cfg, mach = results["config"], results["machine"]
    size = human_size(cfg["size_bytes"])
    reps = cfg["reps"]
    L = []
    L.append("# lunfs benchmarks")
    L.append("")
    L.append("<!-- Generated by scripts/bench: edit scripts/bench.d/bench.py, not this file. -->")
    L.append("")
    L.append(f"Measured on {results['date']} by `scripts/bench`"
             + (" with `--quick` (1 GiB files, 3 s random tests): the figures are indicative "
                "only; a full run uses 4 GiB files and 15 s random tests."
                if cfg["quick"] else "."))
    L.append("")
    L.append("## How to run")
    L.append("")
    L.append("```sh")
    L.append("sudo scripts/bench            # full: 4 GiB files, 3 repetitions (about 45 min)")
    L.append("sudo scripts/bench --quick    # 1 GiB files, short random tests (about 10 min)")
    L.append("scripts/bench --help          # --size, --reps, --runtime, --rows, --dir, ...")
    L.append("```")
    L.append("")
    L.append("It needs root (it drops the page cache and mounts FUSE file systems), installs "
             "fio, qemu-utils, qemu-system-common, gnuplot-nox, python3, fuse3 and "
             "libfuse3-dev when they are missing, builds lunfs with `swift build -c release`, "
             "prints the table, writes the results as JSON to `bench-results/` and rewrites "
             "this page and `docs/bench.png`. Everything it creates lives in one work "
             "directory (`--dir`, default /var/tmp) that it unmounts and removes on exit, "
             "also on Ctrl-C.")
    L.append("")
    L.append("## Machine")
    L.append("")
    L.append(f"- CPU: {mach['cpu']}")
    L.append(f"- Memory: {mach['memory']}")
    L.append(f"- OS: {mach['os']}, kernel {mach['kernel']}")
    L.append(f"- Disk and file system holding every test file and the pool's drives: "
             f"{mach['device']}, `{mach['filesystem']}`")
    L.append(f"- {mach['fio']}; {mach['qemu']}; lunfs at {mach['lunfs_revision']}")
    if mach.get("loadavg_start"):
        L.append(f"- Load average (1, 5, 15 min) at the start: {mach['loadavg_start']}; at the "
                 f"end: {mach.get('loadavg_end', 'unknown')}. Anything else running on the "
                 "machine competes with the daemons for its CPUs.")
    L.append("")
    L.append("## Results")
    L.append("")
    if results.get("lunfs_error"):
        L.append(f"**lunfs: not available: {results['lunfs_error']}**")
        L.append("")
    L.append(f"Medians of {reps} repetition{'s' if reps != 1 else ''}; {size} files; "
             "MB/s are 10^6 bytes per second.")
    L.append("")
    L += table_lines(results, markdown=True)
    L.append("")
    if plot_error is None:
        L.append(f"![MB/s and IOPS per test and row]({png_rel})")
    else:
        L.append(f"(No plot: {plot_error}.)")
    L.append("")
    L.append("### Snapshots, memory, mount time")
    L.append("")
    L.append("```")
    L += extras_lines(results)
    L.append("```")
    L.append("")
    L.append("## Targets")
    L.append("")
    L += target_lines(results, markdown=True)
    L.append("")
    L.append("A ratio target holds when every test listed meets it; the detail names the "
             "test furthest from it. RAID data fractions: 1 for RAID 0, 0.8 for RAID 5, "
             "0.5 for RAID 1.")
    L.append("")
    L.append("## What each row and test is")
    L.append("")
    L.append(f"All rows are {size} files in the same work directory, so on the same disk "
             "and file system.")
    L.append("")
    L.append("| row | the file |")
    L.append("|---|---|")
    L.append("| raw | a plain file, written once in full before the tests |")
    L.append("| qsd-qcow2 | a thin qcow2 image (64 KiB clusters, default cache mode: host page "
             "cache, flushed on fsync) exported as a file by `qemu-storage-daemon --blockdev "
             "driver=file,... --blockdev driver=qcow2,... --export type=fuse,...,writable=on`; "
             "written once in full before the tests |")
    L.append("| qsd-qcow2-overlay | the same over a qcow2 overlay whose backing file is a fully "
             "written qcow2 (the snapshot). The overlay is re-created before every test, so "
             "writes are first writes (copy on write) and reads go through the backing file |")
    L.append(f"| lunfs-raid0, -raid1, -raid5 | a lunfs disk (`mkdir`, `setfattr -n "
             f"user.lunfs.raid` before the first write, `truncate -s {size}`) in one pool of "
             f"8 sparse drive files of {human_size(cfg.get('drive_size_bytes', 0))}; written "
             "once in full before the tests |")
    L.append("| lunfs-after-snapshot | a lunfs disk at the pool's default RAID level, written "
             "in full and snapshotted once (`mkdir disk/bench0`); before every write test a "
             "new snapshot is taken (and removed after it), so each write test measures copy "
             "on first write |")
    L.append("")
    L.append("| test | what runs |")
    L.append("|---|---|")
    for t in TEST_IDS:
        if t in results["tests"]:
            d = TEST_DESCRIPTION[t].replace("RUNTIME", str(cfg["runtime_s"]))
            L.append(f"| {TEST_LABEL[t]} ({t}) | `{d}` |")
    L.append("")
    L.append("- fio always gets `--filename=` the existing image and `--size=` its size, with "
             "`--allow_file_create=0 --fallocate=none`, so it never lays a file out or writes "
             "one anywhere else; results are read from `--output-format=json`. Write tests end "
             "with an fsync that counts in their time.")
    L.append("- Every test starts with `sync`; read tests also with `echo 3 > "
             "/proc/sys/vm/drop_caches`. dio = O_DIRECT (libaio, queue depth 16); buf = through "
             "the page cache (psync, 4 jobs on the one file).")
    L.append("- The fill before the tests uses fio's non-zero buffers. dd writes zeros from "
             "/dev/zero over that filled file: qemu's detect-zeroes is off (its default), and "
             "lunfs skips zeros only where nothing is mapped, which the fill rules out; the fio "
             "columns use non-zero data.")
    L.append("- mkdir-snapshot latency is the time of the mkdir(2) call, median of at least 5, "
             "on a 16 GiB disk with 1 GiB and then 16 GiB written (dd, 1 MiB blocks). Map "
             "memory comes from `lunfs status --json` (`mapBytesPerAllocatedMiB`). Daemon RSS "
             "is VmRSS (and VmHWM, the peak) from /proc/PID/status of the lunfs daemon. Mount "
             f"time is the wall time of `lunfs mount` (it returns once mounted) on a pool of "
             f"{cfg.get('mount_disks', 250)} disks with {cfg.get('mount_snapshots', 3)} "
             "snapshots each and a little data in each, median of the repetitions.")
    L.append("- On a virtual disk the host's cache makes the raw figures swing between "
             "repetitions; compare rows within one run rather than across runs.")
    L.append("")
    errors = []
    for r, e in results["rows"].items():
        if e.get("error") and not e["error"].startswith("lunfs: not available"):
            errors.append(f"- {r}: {e['error']}")
        for t, te in e.get("tests", {}).items():
            for err in te.get("errors", []):
                errors.append(f"- {r} {t}: {err}")
    for why in results["extras"].get("lunfs_hangs", []):
        errors.append(f"- the lunfs daemon stopped answering and was killed: {why}")
    if errors:
        L.append("## Failures during this run")
        L.append("")
        L += errors[:40]
        L.append("")
    return "\n".join(L)


# ----------------------------------------------------------------------------------------

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
                   "no_extras": args.no_extras},
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
            if name == "raw":
                row = RawRow(ctx)
            elif name.startswith("qsd-"):
                row = QsdRow(ctx, overlay=name.endswith("overlay"))
            else:
                row = LunfsRow(ctx, name, RAID_ROWS.get(name))
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
            try:
                snapshot_latency(ctx, ex)
            except (BenchError, OSError) as e:
                ex["snapshot_error"] = str(e)
                log(f"[snapshot] {e}")
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


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
