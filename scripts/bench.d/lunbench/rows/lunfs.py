"""A lunfs disk at a RAID level, or one snapshotted before every write test."""

import os
from ..common import BenchError, fs, timed_mkdir_ms, truncate_file
from ..lunfs import remove_node, remove_tree
from .base import Row
from ..tests import TEST_WRITES


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

    def ensure_mounted(self):
        self.ctx.ensure_pool()

    def setup(self):
        self.ensure_mounted()
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
        self.ensure_mounted()
        if self.snapshot and TEST_WRITES[test]:
            self.current_snap = self.take_snapshot()
        return self.image

    def after(self, test):
        if self.current_snap:
            snap, self.current_snap = self.current_snap, None
            remove_node(snap)     # it only costs space now; bench0 stays for the reads

    def teardown(self):
        remove_tree(self.disk_dir)
