"""Figures beside the table: mkdir-snapshot latency with 1 GiB and 16 GiB written, mount time
of a pool of 1,000 nodes, and map memory from lunfs status."""

import os
import re
import shutil
import time
from .common import BenchError, GiB, MiB, fs, log, median, proc_status_kib, run, timed_mkdir_ms, truncate_file
from .lunfs import remove_node, remove_tree


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
