"""The raw file: the reference every other row is a ratio of."""

import os
from .base import Row


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
