"""The tests: what each one measures (the table, the description printed into
docs/BENCHMARKS.md) and how it runs (dd and fio, parsed). Adding a test: a line in TESTS, a
description, and its branch in Runner.run_test."""

import json
import os
import re
import time
from .common import BenchError, MiB, drop_caches, run


# (id, column label, unit, writes?)  Units: "MB/s" (10^6 bytes per second) or "IOPS".
TESTS = [
    ("dd-write", "dd wr", "MB/s", True),
    ("dd-read", "dd rd", "MB/s", False),
    ("seq-write", "seq wr", "MB/s", True),
    ("seq-read", "seq rd", "MB/s", False),
    ("randread-direct", "rr dio", "IOPS", False),
    ("randwrite-direct", "rw dio", "IOPS", True),
    ("randread-buffered", "rr buf", "IOPS", False),
    ("randwrite-buffered", "rw buf", "IOPS", True),
    # Right after the writes above, with nothing dropped: what a file read soon after it
    # was written gets (qemu-storage-daemon's file stays in the host page cache).
    ("randread-warm", "rr warm", "IOPS", False),
]
TEST_IDS = [t[0] for t in TESTS]
TEST_UNIT = {t[0]: t[2] for t in TESTS}
TEST_WRITES = {t[0]: t[3] for t in TESTS}
TEST_LABEL = {t[0]: t[1] for t in TESTS}


# What each test runs; FILE and SIZE are filled in. Printed into docs/BENCHMARKS.md.
TEST_DESCRIPTION = {
    "dd-write": "SIZE/1M write(2)s of 1 MiB of non-zero bytes (one random MiB, repeated) over FILE, then fsync: dd conv=notrunc,fsync without /dev/zero, whose zeros lunfs turns into holes",
    "dd-read": "drop caches; dd if=FILE of=/dev/null bs=1M",
    "seq-write": "fio rw=write bs=1M ioengine=libaio direct=1 iodepth=16 end_fsync=1",
    "seq-read": "drop caches; fio rw=read bs=1M ioengine=libaio direct=1 iodepth=16",
    "randread-direct": "drop caches; fio rw=randread bs=4k ioengine=libaio direct=1 iodepth=16, RUNTIME s",
    "randwrite-direct": "fio rw=randwrite bs=4k ioengine=libaio direct=1 iodepth=16 end_fsync=1, RUNTIME s",
    "randread-buffered": "drop caches; fio rw=randread bs=4k ioengine=psync numjobs=4, RUNTIME s",
    "randwrite-buffered": "fio rw=randwrite bs=4k ioengine=psync numjobs=4 end_fsync=1, RUNTIME s",
    "randread-warm": "no cache drop, right after the write tests; fio rw=randread bs=4k ioengine=libaio direct=1 iodepth=16, RUNTIME s",
}


class Runner:
    def __init__(self, args):
        self.args = args
        self.size_bytes = args.size
        self.size_mib = args.size // MiB

    def seq_timeout_s(self):
        # Generous: 2 MB/s would be pathological, and a hung FUSE daemon must not hang the run.
        return max(300, self.size_bytes // (2 * 1000 * 1000))

    def dd(self, src, dst, write):
        cmd = ["dd", f"if={src}", f"of={dst}", "bs=1M", f"count={self.size_mib}"]
        if write:
            cmd.append("conv=notrunc,fsync")
        p = run(cmd, timeout=self.seq_timeout_s())
        m = re.search(r"^(\d+) bytes .* copied, ([\d.e+-]+) s", p.stderr, re.M)
        if not m:
            raise BenchError(f"cannot parse dd output: {p.stderr.strip()[-200:]}")
        moved_bytes, seconds = int(m.group(1)), float(m.group(2))
        if moved_bytes != self.size_bytes:
            raise BenchError(f"dd moved {moved_bytes} bytes, expected {self.size_bytes}")
        return moved_bytes / seconds / 1e6

    def write_pattern(self, path):
        """dd's 1 MiB writes with fsync at the end, of non-zero bytes: lunfs unmaps segments
        that writes leave all zeros, so /dev/zero would measure that instead of writing."""
        block = os.urandom(MiB)
        fd = os.open(path, os.O_WRONLY)
        try:
            t0 = time.perf_counter()
            for i in range(self.size_mib):
                if os.pwrite(fd, block, i * MiB) != MiB:
                    raise BenchError(f"short write at {i} MiB")
            os.fsync(fd)
            seconds = time.perf_counter() - t0
        finally:
            os.close(fd)
        return self.size_bytes / seconds / 1e6

    def fio(self, path, name, extra, timeout_s):
        cmd = ["fio", f"--name={name}", f"--filename={path}", f"--size={self.size_bytes}",
               "--allow_file_create=0", "--fallocate=none", "--invalidate=1",
               "--group_reporting", "--output-format=json"] + extra
        p = run(cmd, timeout=timeout_s)
        text = p.stdout
        start = text.find("{")
        if start < 0:
            raise BenchError(f"fio printed no JSON: {(p.stderr or text).strip()[-200:]}")
        try:
            job = json.loads(text[start:])["jobs"][0]
        except (ValueError, KeyError, IndexError) as e:
            raise BenchError(f"cannot parse fio JSON: {e}")
        if job.get("error"):
            raise BenchError(f"fio job error {job['error']}")
        return job

    def run_test(self, test, path):
        """Returns (value in the test's unit, MB/s)."""
        rt = str(self.args.runtime)
        rand_timeout = self.args.runtime + 300
        if test in ("dd-read", "seq-read", "randread-direct", "randread-buffered"):
            drop_caches()
        else:
            os.sync()
        if test == "dd-write":
            v = self.write_pattern(path)
            return v, v
        if test == "dd-read":
            v = self.dd(path, "/dev/null", write=False)
            return v, v
        if test in ("seq-write", "seq-read"):
            rw = "write" if test == "seq-write" else "read"
            extra = [f"--rw={rw}", "--bs=1M", "--ioengine=libaio", "--direct=1", "--iodepth=16"]
            if rw == "write":
                extra.append("--end_fsync=1")     # the time includes reaching the disk
            job = self.fio(path, test, extra, self.seq_timeout_s())
            v = job[rw]["bw_bytes"] / 1e6
            if job[rw]["io_bytes"] < self.size_bytes:
                raise BenchError(f"fio moved only {job[rw]['io_bytes']} bytes")
            return v, v
        rw = "read" if "read" in test else "write"
        if test.endswith("-direct") or test == "randread-warm":
            extra = ["--ioengine=libaio", "--direct=1", "--iodepth=16"]
        else:
            extra = ["--ioengine=psync", "--direct=0", "--numjobs=4"]
        if rw == "write":
            extra.append("--end_fsync=1")
        extra += [f"--rw=rand{rw}", "--bs=4k", "--time_based", f"--runtime={rt}",
                  "--norandommap", "--randrepeat=0"]
        job = self.fio(path, test, extra, rand_timeout)
        return job[rw]["iops"], job[rw]["bw_bytes"] / 1e6

    def fill(self, path):
        """Writes the whole file once with non-zero data (fio's default buffers): not measured.
        Returns MB/s of that first write, kept as information."""
        os.sync()
        job = self.fio(path, "fill", ["--rw=write", "--bs=1M", "--ioengine=psync",
                                      "--end_fsync=1"], self.seq_timeout_s())
        return job["write"]["bw_bytes"] / 1e6
