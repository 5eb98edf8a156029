"""The report: table, ratios, targets, extras, on stdout and in the results JSON."""

from .common import human_size
from .rows import DATA_FRACTION, LUNFS_ROWS, RAID_ROWS, ROWS
from .tests import TEST_IDS, TEST_LABEL, TEST_UNIT, TEST_WRITES


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
    if row == "lunfs-raid0":
        refs.append("lunfs-raid0-devfuse")     # the io_uring loop against /dev/fuse reads
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
    mid = ex.get("midrun_snapshot_mkdir_ms")
    if mid is None:
        add("mkdir snapshot under buffered write load < 50 ms, snapshot exact", None, "no data")
    else:
        add("mkdir snapshot under buffered write load < 50 ms, snapshot exact",
            mid < 50 and ex.get("midrun_model", "").startswith("ok"), f"{mid:.1f} ms; {ex.get('midrun_model')}")
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
    if ex.get("midrun_snapshot_mkdir_ms") is not None:
        lines.append(f"mkdir snapshot, mid buffered 4k random writes: {ms(ex['midrun_snapshot_mkdir_ms'])} "
                     f"({ex['midrun_writes_per_s']:.0f} writes/s); snapshot {ex['midrun_model']}")
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
    for k in ("snapshot_error", "midrun_error", "mount_error", "status_error"):
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
