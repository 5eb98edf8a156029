"""The RAID 0 row served through /dev/fuse reads (`-o uring=off`) instead of FUSE over
io_uring: a second pool and mount of its own, so the two request loops show as rows side by
side in one run (the main pool uses the ring whenever the kernel offers it)."""

import os
import shutil
from ..common import human_size, is_mountpoint, log
from .lunfs import LunfsRow


class LunfsDevFuseRow(LunfsRow):
    def __init__(self, ctx, name):
        super().__init__(ctx, name, 0)
        self.pool = os.path.join(ctx.workdir, "pool-devfuse")
        self.mnt = os.path.join(ctx.workdir, "mnt-devfuse")
        self.disk_dir = os.path.join(self.mnt, "raid0")
        self.image = os.path.join(self.disk_dir, "disk.img")

    def ensure_mounted(self):
        if is_mountpoint(self.mnt) and self.ctx.lunfs.alive(self.mnt):
            return
        opts = ["--create", "--drives", "8", "--drive-size",
                human_size(self.ctx.drive_size_bytes())]
        if os.path.isdir(self.pool) and os.listdir(self.pool):
            opts = []
        opts += self.ctx.args.mount_options.split() + ["-o", "uring=off"]
        self.ctx.lunfs.mount(self.pool, self.mnt, opts)

    def setup(self):
        if open("/sys/module/fuse/parameters/enable_uring").read().strip() != "Y":
            log(f"[{self.name}] enable_uring is off: lunfs-raid0 also reads /dev/fuse")
        return super().setup()

    def teardown(self):
        try:
            super().teardown()
        finally:
            self.ctx.lunfs.unmount(self.mnt)
            shutil.rmtree(self.pool, ignore_errors=True)
