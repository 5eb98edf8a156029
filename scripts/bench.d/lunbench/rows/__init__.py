"""The rows: every row is a file of the same size on the same file system, compared with the
raw file. Adding a row: its class in a file of this package (see base.Row) and a line in
ROW_KINDS."""

from .lunfs import LunfsRow
from .lunfs_devfuse import LunfsDevFuseRow
from .qsd import QsdRow
from .raw import RawRow

# Row name -> how to make it (given the run's context), in the order the rows run and show.
ROW_KINDS = {
    "raw": lambda ctx: RawRow(ctx),
    "qsd-qcow2": lambda ctx: QsdRow(ctx, overlay=False),
    "qsd-qcow2-overlay": lambda ctx: QsdRow(ctx, overlay=True),
    "lunfs-raid0": lambda ctx: LunfsRow(ctx, "lunfs-raid0", 0),
    "lunfs-raid0-devfuse": lambda ctx: LunfsDevFuseRow(ctx, "lunfs-raid0-devfuse"),
    "lunfs-raid1": lambda ctx: LunfsRow(ctx, "lunfs-raid1", 1),
    "lunfs-raid5": lambda ctx: LunfsRow(ctx, "lunfs-raid5", 5),
    "lunfs-after-snapshot": lambda ctx: LunfsRow(ctx, "lunfs-after-snapshot", None),
}

ROWS = list(ROW_KINDS)

LUNFS_ROWS = [r for r in ROWS if r.startswith("lunfs-")]

RAID_ROWS = {"lunfs-raid0": 0, "lunfs-raid1": 1, "lunfs-raid5": 5}

# Share of raw bandwidth a RAID level can pass on to writes (the targets' "data fraction").
DATA_FRACTION = {0: 1.0, 1: 0.5, 5: 0.8}


def make_row(ctx, name):
    return ROW_KINDS[name](ctx)
