"""lunfs for the benchmark: the binary (built or given), mounts and daemons, and removing disks
and snapshots without letting a hung daemon hang the run."""

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from .common import BenchError, CLEANUP, ENV, GUARD, MiB, REPO, abort_fuse_connection, is_mountpoint, log, run, stop_pid, truncate_file, wait_pid_gone


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
