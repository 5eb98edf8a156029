"""qemu-storage-daemon exporting a qcow2 image (and a qcow2 overlay) as a FUSE file."""

import os
from ..common import BenchError, CLEANUP, is_mountpoint, run, stop_pid
from .base import Row


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
