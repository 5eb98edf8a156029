"""A snapshot taken in the middle of a buffered 4 KiB random-write run: how long mkdir takes
under that load, and whether the snapshot holds exactly what it must. Four threads write
stamped blocks (thread, write number, block) at random into their own quarter of a RAID 0 disk;
mkdir comes halfway. The snapshot is then read back and checked against a model: each block
holds the last write to it that returned before mkdir was called, or one that was in flight
while mkdir ran; never a write begun after mkdir returned, never anything else."""

import os
import random
import struct
import threading
import time
from .common import BenchError, GUARD, MiB, fs, log, timed_mkdir_ms, truncate_file
from .lunfs import remove_tree

BLOCK = 4096
THREADS = 4


def stamped_block(thread, number, block):
    return struct.pack("<IIQ", thread, number, block) * (BLOCK // 16)


def snapshot_under_writes(ctx, extras):
    args = ctx.args
    ctx.ensure_pool()
    disk = os.path.join(ctx.pool_mnt, "midrun")
    img = os.path.join(disk, "disk.img")
    size = min(args.size, 256 * MiB)
    blocks_per_thread = size // BLOCK // THREADS
    fs("mkdir", os.mkdir, disk)
    # RAID 0: the figure is about the flush and the split, not about RAID 5's small writes.
    fs("setxattr user.lunfs.raid", os.setxattr, disk, "user.lunfs.raid", b"0")
    fs("truncate", truncate_file, img, size)
    # Per thread, the block of each write, appended once the write returned.
    written = [[] for _ in range(THREADS)]
    stop = threading.Event()
    failures = []

    def writer(t):
        chooser = random.Random(t)
        fd = os.open(img, os.O_WRONLY)
        try:
            number = 0
            while not stop.is_set():
                block = t * blocks_per_thread + chooser.randrange(blocks_per_thread)
                number += 1
                os.pwrite(fd, stamped_block(t, number, block), block * BLOCK)
                written[t].append(block)
        except OSError as e:
            failures.append(f"writer {t}: {e}")
        finally:
            os.close(fd)

    threads = [threading.Thread(target=writer, args=(t,), daemon=True) for t in range(THREADS)]
    try:
        started = time.monotonic()
        for th in threads:
            th.start()
        time.sleep(args.runtime / 2)
        before = [len(w) for w in written]
        mkdir_ms = fs("mkdir snapshot", timed_mkdir_ms, os.path.join(disk, "midrun-snap"))
        after = [len(w) for w in written]
        time.sleep(args.runtime / 2)
        stop.set()
        for th in threads:
            th.join(timeout=120)
        elapsed = time.monotonic() - started
        if failures:
            raise BenchError("; ".join(failures))
        snapshot = GUARD.call("read the snapshot", lambda: open(os.path.join(disk, "midrun-snap", "disk.img"), "rb").read(),
                              timeout_s=300)
        wrong = check(snapshot, written, before, after, blocks_per_thread)
        extras["midrun_snapshot_mkdir_ms"] = mkdir_ms
        extras["midrun_writes_per_s"] = sum(len(w) for w in written) / elapsed
        extras["midrun_writes_before_mkdir"] = sum(before)
        extras["midrun_model"] = (f"ok: every block as the model says ({sum(before)} writes returned before mkdir)"
                                  if not wrong else f"WRONG: {len(wrong)} blocks, first {wrong[:5]}")
        log(f"[midrun] mkdir {mkdir_ms:.2f} ms under {extras['midrun_writes_per_s']:.0f} writes/s; "
            f"snapshot {extras['midrun_model']}")
    finally:
        stop.set()
        if ctx.lunfs.alive(ctx.pool_mnt):
            remove_tree(disk)


def check(snapshot, written, before, after, blocks_per_thread):
    """The blocks (thread, block) of the snapshot that hold what the model forbids."""
    wrong = []
    for t, blocks in enumerate(written):
        # For each block: the last write that returned before mkdir (0: none), and the writes
        # that may have been in flight while mkdir ran (at most one per thread beyond `after`).
        last_before = {}
        maybe = {}
        for index, block in enumerate(blocks):
            number = index + 1
            if number <= before[t]:
                last_before[block] = number
            elif number <= after[t] + 1:
                maybe.setdefault(block, set()).add(number)
        for block in range(t * blocks_per_thread, (t + 1) * blocks_per_thread):
            piece = snapshot[block * BLOCK:(block + 1) * BLOCK]
            allowed = {last_before.get(block, 0)} | maybe.get(block, set())
            if piece == bytes(BLOCK):
                got = 0
            else:
                owner, number, named = struct.unpack_from("<IIQ", piece)
                got = number if piece == stamped_block(owner, number, named) and owner == t and named == block else -1
            if got not in allowed:
                wrong.append((t, block))
    return wrong
