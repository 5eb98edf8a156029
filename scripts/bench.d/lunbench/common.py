"""Small helpers every part of the benchmark uses: running commands, the page cache, mounts and
processes, the guard against a hung FUSE daemon, and the clean-up on exit."""

from pathlib import Path
import argparse
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time


REPO = Path(__file__).resolve().parents[3]


MiB = 1 << 20


GiB = 1 << 30


ENV = dict(os.environ, LC_ALL="C", LANG="C")


ENV["PATH"] = ENV.get("PATH", "/usr/bin:/bin") + ":/opt/swift/usr/bin:/usr/sbin:/sbin"


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
