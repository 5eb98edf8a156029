// Engine figures that need no mount, printed as a table: map memory per allocated MiB with
// 64 GiB written, snapshot (mkdir) latency with 1 GiB and 16 GiB written, and the time to
// open a pool holding 1,000 disks and snapshots. The drives keep their quorum space (the
// metadata) in memory and drop user data, so 64 GiB of writes cost map work, not disk I/O.
//
//   swift run -c release lunfs-engine-figures [--gib 64]
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LunEngine
import LunEngineTesting

/// A drive that remembers only its first `keptBytes` (quorum space) and drops the rest.
final class MetadataOnlyDrive: BlockDevice, @unchecked Sendable {
    let name: String
    let sizeBytes: UInt64
    private let kept: MemoryDevice
    private let keptBytes: UInt64

    init(name: String, sizeBytes: UInt64, keptBytes: UInt64) {
        self.name = name
        self.sizeBytes = sizeBytes
        self.keptBytes = keptBytes
        kept = MemoryDevice(name: name, sizeBytes: keptBytes)
    }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(LunError) {
        if offset + UInt64(buffer.count) <= keptBytes { try kept.read(into: buffer, at: offset) } else {
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
        }
    }
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) {
        if offset + UInt64(buffer.count) <= keptBytes { try kept.write(buffer, at: offset) }
    }
    func sync() throws(LunError) {}
    func zero(at offset: UInt64, length: UInt64) throws(LunError) {
        if offset + length <= keptBytes { try kept.zero(at: offset, length: length) }
    }
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func residentBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    return (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE)))
}

func drives(count: Int, sizeBytes: UInt64) -> [MetadataOnlyDrive] {
    let quorum = UInt64(PoolGeometry.defaultQuorumPSEGs(driveSizeBytes: sizeBytes)) * PoolGeometry.defaultPSEGSizeBytes
    return (0..<count).map { MetadataOnlyDrive(name: "drive\($0)", sizeBytes: sizeBytes, keptBytes: quorum) }
}

func writeGiB(_ pool: Pool, _ id: DiskID, gib: Int, buffer: UnsafeRawBufferPointer) throws {
    for i in 0..<(gib << 10) { try pool.write(id, at: UInt64(i) << 20, from: buffer) }
}

let args = CommandLine.arguments
let gib = args.firstIndex(of: "--gib").flatMap { Int(args[$0 + 1]) } ?? 64
let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
buffer.initializeMemory(as: UInt8.self, repeating: 0x5A)

do {
    print("lunfs engine figures (release build, drives that keep only their metadata)")

    // 1. Map memory with `gib` GiB written.
    let d1 = drives(count: 8, sizeBytes: 1 << 40)
    try Pool.format(devices: d1, raid: .raid0)
    let pool = try Pool.open(devices: d1)
    let id = try pool.createDisk(named: "big")
    let rssBefore = residentBytes()
    let t0 = now()
    try writeGiB(pool, id, gib: gib, buffer: UnsafeRawBufferPointer(buffer))
    let writeSeconds = now() - t0
    let memory = pool.mapMemory()
    let rssAfter = residentBytes()
    print(String(format: "map memory, %d GiB written: %d bytes for %d MiB = %.2f B per allocated MiB (target <= 16)",
                 gib, memory.bytes, memory.allocatedMiB, Double(memory.bytes) / Double(memory.allocatedMiB)))
    print(String(format: "  plus the pool's PSEG bitmaps: %d bytes for %d TiB of drives (1 bit per 2 MiB PSEG)",
                 memory.psegBitmapBytes, 8))
    print(String(format: "  process RSS grew %.1f MB while writing (maps plus the uncommitted journal record and buffers)",
                 Double(rssAfter - rssBefore) / 1e6))
    print(String(format: "map updates without data I/O: %.0f fresh 1 MiB segments per second", Double(gib << 10) / writeSeconds))
    try pool.close()

    // 2. Snapshot latency by amount written.
    var latencies: [Int: Double] = [:]
    for size in [1, 16] {
        let d = drives(count: 8, sizeBytes: 64 << 30)
        try Pool.format(devices: d, raid: .raid5)
        let p = try Pool.open(devices: d)
        let disk = try p.createDisk(named: "vm")
        try writeGiB(p, disk, gib: size, buffer: UnsafeRawBufferPointer(buffer))
        try p.commit()
        var samples: [Double] = []
        for i in 0..<7 {
            let t = now()
            _ = try p.createSnapshot(of: disk, named: "s\(i)")
            samples.append(now() - t)
            try p.write(disk, at: 0, from: UnsafeRawBufferPointer(buffer))
        }
        samples.sort()
        latencies[size] = samples[samples.count / 2]
        print(String(format: "mkdir snapshot, %2d GiB written: median %.2f ms (of %d; min %.2f, max %.2f)",
                     size, samples[samples.count / 2] * 1000, samples.count, samples.first! * 1000, samples.last! * 1000))
        try p.close()
    }
    print(String(format: "16 GiB / 1 GiB snapshot latency: %.2fx (target <= 1.5x)", latencies[16]! / latencies[1]!))

    // 3. Opening a pool with 1,000 disks and snapshots (250 disks with 3 snapshots each).
    let d3 = drives(count: 8, sizeBytes: 64 << 30)
    try Pool.format(devices: d3, raid: .raid1)
    let p3 = try Pool.open(devices: d3)
    for i in 0..<250 {
        let disk = try p3.createDisk(named: "vm\(i)")
        try p3.write(disk, at: 0, from: UnsafeRawBufferPointer(buffer))
        for s in 0..<3 {
            _ = try p3.createSnapshot(of: disk, named: "snap\(s)")
            try p3.write(disk, at: UInt64(s + 1) << 20, from: UnsafeRawBufferPointer(buffer))
        }
    }
    try p3.close()
    let t3 = now()
    let reopened = try Pool.open(devices: d3)
    let openSeconds = now() - t3
    print(String(format: "open of a pool with %d disks and snapshots: %.1f ms (engine only; target < 1 s for the mount)",
                 reopened.disks().count, openSeconds * 1000))
    try reopened.close()

    // 4. The engine alone on drive files (no FUSE): sequential 1 MiB writes and reads, and
    //    4 KiB random writes, per RAID level, against one raw file of the same size.
    let dir = "/var/tmp/lunfs-engine-figures-\(getpid())"
    let total = 1 << 30
    for level in RAIDLevel.allCases {
        var options = PoolOptions()
        options.driveCount = 8
        options.driveSizeBytes = 2 << 30
        options.raid = level
        let p = try Pool.create(directory: dir, options: options)
        let disk = try p.createDisk(named: "vm")
        var t = now()
        for i in 0..<(total >> 20) { try p.write(disk, at: UInt64(i) << 20, from: UnsafeRawBufferPointer(buffer)) }
        try p.commit()
        let firstWrite = Double(total) / (now() - t) / 1e6
        t = now()
        for i in 0..<(total >> 20) { try p.write(disk, at: UInt64(i) << 20, from: UnsafeRawBufferPointer(buffer)) }
        try p.commit()
        let overwrite = Double(total) / (now() - t) / 1e6
        t = now()
        for i in 0..<(total >> 20) { _ = try p.read(disk, at: UInt64(i) << 20, into: buffer) }
        let read = Double(total) / (now() - t) / 1e6
        var r = SeededRandom(seed: 1)
        let small = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[0..<4096])
        t = now()
        let n = 20_000
        for _ in 0..<n { try p.write(disk, at: r.below(UInt64(total >> 12)) << 12, from: small) }
        let iops = Double(n) / (now() - t)
        print(String(format: "engine on drive files, %@: 1 MiB first write %.0f MB/s, overwrite %.0f MB/s, read %.0f MB/s (page cache); 4 KiB random overwrite %.0f IOPS",
                     level.description, firstWrite, overwrite, read, iops))
        try p.close()
        try? FileManager.default.removeItem(atPath: dir)
    }
} catch {
    print("failed: \(error)")
    exit(1)
}
