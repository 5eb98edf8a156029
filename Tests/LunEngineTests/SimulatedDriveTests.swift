// Checks the test drives themselves, MemoryDevice and SimulatedDrive, so that a failing engine
// crash test can be trusted to point at the engine and not at the drive it ran on.
import Dispatch
import Foundation
import LunEngine
import LunEngineTesting
import XCTest

final class SimulatedDriveTests: XCTestCase {
    private let gib: UInt64 = 1 << 30
    private let sector = SimulatedDrive.sectorSizeBytes

    // MARK: Plain storage

    func testSparseDrivesReadZerosAndCostOnlyWrittenPages() throws {
        let drives = (0..<8).map { MemoryDevice(name: "m\($0)", sizeBytes: 16 * gib) }
        for drive in drives {
            XCTAssertEqual(try read(drive, at: 16 * gib - 4096, count: 4096), zeros(4096))
            try write(drive, pattern(4096, seed: 1), at: 9 * gib)
            XCTAssertEqual(drive.residentBytes, 64 * 1024)
        }
        let simulated = SimulatedDrive(name: "s", sizeBytes: 16 * gib, seed: 1)
        XCTAssertEqual(try read(simulated, at: 3 * gib + 17, count: 1000), zeros(1000))
        XCTAssertEqual(simulated.residentBytes, 0)
    }

    func testReadAfterWriteAcrossPagesAndZero() throws {
        let devices: [any BlockDevice] = [
            MemoryDevice(sizeBytes: gib), SimulatedDrive(name: "s", sizeBytes: gib, seed: 2),
        ]
        for drive in devices {
            let data = pattern(200_000, seed: 3)  // straddles four 64 KiB pages
            try write(drive, data, at: 65_536 - 100)
            XCTAssertEqual(try read(drive, at: 65_536 - 100, count: data.count), data)
            try write(drive, pattern(10, seed: 4), at: 70_000)
            var expected = data
            expected.replaceSubrange(Int(70_000 - 65_436)..<Int(70_010 - 65_436), with: pattern(10, seed: 4))
            XCTAssertEqual(try read(drive, at: 65_436, count: data.count), expected)

            try drive.zero(at: 65_536, length: 140_000)  // a whole page and two partial ones
            expected.replaceSubrange(100..<140_100, with: zeros(140_000))
            XCTAssertEqual(try read(drive, at: 65_436, count: data.count), expected)
            try drive.zero(at: 0, length: gib)  // wide hole over a sparse image
            XCTAssertEqual(try read(drive, at: 65_436, count: data.count), zeros(data.count))
        }
    }

    func testManyThreadsAtOnce() throws {
        let devices: [any BlockDevice] = [
            MemoryDevice(sizeBytes: gib), SimulatedDrive(name: "s", sizeBytes: gib, seed: 40),
        ]
        for drive in devices {
            DispatchQueue.concurrentPerform(iterations: 8) { thread in
                for i in 0..<200 {
                    let offset = UInt64(thread) * (1 << 24) + UInt64(i) * 4096 + 100  // straddles sectors
                    let bytes = [UInt8](repeating: UInt8(thread + 1), count: 4096)
                    try! write(drive, bytes, at: offset)
                    XCTAssertEqual(try! read(drive, at: offset, count: 4096), bytes)
                    if i % 50 == 0 { try! drive.sync() }
                }
            }
        }
    }

    // MARK: Crash

    func testCrashKeepsSyncedDataExactly() throws {
        let drive = SimulatedDrive(name: "s", sizeBytes: gib, seed: 5)
        let synced = pattern(64 * 1024, seed: 6)
        try write(drive, synced, at: 1 << 20)
        try drive.sync()
        try write(drive, pattern(8192, seed: 7), at: 1 << 20)  // unsynced overwrite
        try write(drive, pattern(8192, seed: 8), at: 5 << 20)  // unsynced new data
        try drive.zero(at: (1 << 20) + 32768, length: 4096)  // unsynced zero
        XCTAssertEqual(drive.unsyncedOperationCount, 3)

        let after = drive.crash(seed: 9, tearing: .dropUnsynced)
        XCTAssertEqual(try read(after, at: 1 << 20, count: synced.count), synced)
        XCTAssertEqual(try read(after, at: 5 << 20, count: 8192), zeros(8192))
        XCTAssertEqual(after.unsyncedOperationCount, 0)
        XCTAssertEqual(after.counters.crashLost, 3)

        // With any tearing, bytes no unsynced write touched survive exactly.
        for seed: UInt64 in 0..<20 {
            let drive = SimulatedDrive(name: "s", sizeBytes: gib, seed: seed)
            try write(drive, synced, at: 0)
            try drive.sync()
            try write(drive, pattern(8192, seed: seed), at: 8192)
            let after = drive.crash(seed: seed)
            XCTAssertEqual(try read(after, at: 0, count: 8192), Array(synced[0..<8192]))
            XCTAssertEqual(try read(after, at: 16384, count: synced.count - 16384), Array(synced[16384...]))
        }
    }

    /// A durable copy holds what was synced, nothing unsynced, and lives apart from its
    /// original: writes to either do not reach the other.
    func testDurableCopyHoldsSyncedBytesAndIsIndependent() throws {
        let drive = SimulatedDrive(name: "s", sizeBytes: gib, seed: 18)
        let synced = pattern(8192, seed: 19)
        try write(drive, synced, at: 0)
        try drive.sync()
        try write(drive, pattern(4096, seed: 20), at: 0)  // unsynced
        let copy = drive.durableCopy(seed: 1)
        XCTAssertEqual(try read(copy, at: 0, count: 8192), synced)
        XCTAssertEqual(copy.unsyncedOperationCount, 0)
        try write(copy, pattern(4096, seed: 21), at: 4096)
        XCTAssertEqual(try read(drive, at: 4096, count: 4096), Array(synced[4096...]))
        try write(drive, pattern(4096, seed: 22), at: 65536)
        XCTAssertEqual(try read(copy, at: 65536, count: 4096), zeros(4096))
        XCTAssertEqual(try read(drive, at: 0, count: 4096), pattern(4096, seed: 20))
    }

    func testCrashOutcomeIsReproducibleFromSeed() throws {
        func crashedImage(crashSeed: UInt64) throws -> [UInt8] {
            let drive = SimulatedDrive(name: "s", sizeBytes: gib, seed: 10)
            try write(drive, pattern(256 << 10, seed: 11), at: 0)
            try drive.sync()
            for i in 0..<16 {
                try write(drive, pattern(4096 + 512 * (i % 5), seed: UInt64(100 + i)), at: UInt64(i) * 16384)
            }
            let after = drive.crash(seed: crashSeed)
            return try read(after, at: 0, count: 256 << 10)
        }
        XCTAssertEqual(try crashedImage(crashSeed: 42), try crashedImage(crashSeed: 42))
        XCTAssertNotEqual(try crashedImage(crashSeed: 42), try crashedImage(crashSeed: 43))
    }

    func testTornWritesAreSectorAlignedPrefixesOrSubsets() throws {
        let drive = SimulatedDrive(name: "s", sizeBytes: gib, seed: 12)
        // Non-overlapping writes over zeros; one is unaligned to check absolute sector cuts.
        var writes: [(offset: UInt64, bytes: [UInt8])] = (0..<200).map { i in
            (UInt64(i) * 65536, pattern(512 * (2 + i % 15), seed: UInt64(i) + 1000))
        }
        writes.append((200 * 65536 + 100, pattern(1500, seed: 7)))
        for w in writes { try write(drive, w.bytes, at: w.offset) }
        let after = drive.crash(seed: 13, tearing: .tearAll)
        let counters = after.counters
        XCTAssertEqual(counters.crashLanded + counters.crashLost, 0)
        XCTAssertEqual(counters.crashTornPrefix + counters.crashTornSubset, writes.count)
        XCTAssertGreaterThan(counters.crashTornPrefix, 50)
        XCTAssertGreaterThan(counters.crashTornSubset, 50)

        var prefixes = 0
        for w in writes {
            let found = try read(after, at: w.offset, count: w.bytes.count)
            // Cut at absolute sector boundaries: each piece is all new or all old (zeros).
            var landed: [Bool] = []
            var start = w.offset
            while start < w.offset + UInt64(w.bytes.count) {
                let end = min((start / sector + 1) * sector, w.offset + UInt64(w.bytes.count))
                let range = Int(start - w.offset)..<Int(end - w.offset)
                let new = Array(found[range]) == Array(w.bytes[range])
                let old = found[range].allSatisfy { $0 == 0 }
                XCTAssertTrue(new || old, "piece \(range) of write at \(w.offset) is mixed")
                landed.append(new)
                start = end
            }
            XCTAssertTrue(landed.contains(true) && landed.contains(false), "write at \(w.offset) did not tear")
            if let firstLost = landed.firstIndex(of: false), !landed[firstLost...].contains(true) { prefixes += 1 }
        }
        XCTAssertGreaterThanOrEqual(prefixes, counters.crashTornPrefix)
    }

    func testFailedSyncLeavesWritesUnsyncedAndMakeFullySyncedKeepsAll() throws {
        let drive = SimulatedDrive(name: "s", sizeBytes: gib, seed: 14)
        try write(drive, pattern(4096, seed: 15), at: 0)
        drive.failNextSync()
        XCTAssertThrowsError(try drive.sync())
        XCTAssertEqual(drive.unsyncedOperationCount, 1)
        XCTAssertEqual(try read(drive.crash(seed: 1, tearing: .dropUnsynced), at: 0, count: 4096), zeros(4096))

        let other = SimulatedDrive(name: "s", sizeBytes: gib, seed: 14)
        try write(other, pattern(4096, seed: 15), at: 0)
        other.disappear()
        other.makeFullySynced()
        XCTAssertEqual(try read(other.crash(seed: 1, tearing: .dropUnsynced), at: 0, count: 4096), pattern(4096, seed: 15))
    }

    /// A write held at its gate has not landed: reads and a sync go on beside it without
    /// seeing it, and that sync does not make it durable once the gate opens.
    func testWriteHeldAtGateLandsOnlyWhenOpenedAndAfterTheSyncBesideIt() throws {
        let drive = SimulatedDrive(name: "s", sizeBytes: gib, seed: 16)
        let gate = drive.holdNextWrite()
        defer { gate.open() }
        let landed = DispatchSemaphore(value: 0)
        let data = pattern(4096, seed: 17)
        Thread {
            try? write(drive, data, at: 8192)
            landed.signal()
        }.start()
        XCTAssertTrue(gate.waitUntilReached())
        XCTAssertEqual(landed.wait(timeout: .now() + 0.05), .timedOut, "the write passed a closed gate")
        XCTAssertEqual(try read(drive, at: 8192, count: 4096), zeros(4096))
        try drive.sync()
        gate.open()
        XCTAssertEqual(landed.wait(timeout: .now() + 30), .success)
        XCTAssertEqual(try read(drive, at: 8192, count: 4096), data)
        XCTAssertEqual(drive.unsyncedOperationCount, 1)
        // One-shot: the next write passes freely.
        try write(drive, data, at: 0)
        XCTAssertEqual(try read(drive.crash(seed: 1, tearing: .dropUnsynced), at: 8192, count: 4096), zeros(4096))
    }

    func testCrashedDriveRefusesCallsAndRebootedDriveWorks() throws {
        let drive = SimulatedDrive(name: "s", sizeBytes: gib, seed: 16)
        drive.failReads(in: 0..<512)
        let after = drive.crash(seed: 1)
        XCTAssertFalse(drive.isPresent)
        XCTAssertThrowsError(try write(drive, [1], at: 0))
        XCTAssertThrowsError(try drive.sync())
        XCTAssertTrue(after.isPresent)
        XCTAssertThrowsError(try read(after, at: 0, count: 512), "a bad spot survives the reboot")
        try write(after, [1, 2, 3], at: 4096)
        XCTAssertEqual(try read(after, at: 4096, count: 3), [1, 2, 3])
        XCTAssertEqual(after.counters.crashes, 1)
        XCTAssertEqual(after.counters.refusedCalls, 0)
        XCTAssertEqual(drive.counters.refusedCalls, 2)
    }

    // MARK: Faults

    func testReadAndWriteErrors() throws {
        let drive = SimulatedDrive(name: "s", sizeBytes: gib, seed: 17)
        try write(drive, pattern(8192, seed: 18), at: 0)

        drive.failReads(in: 4096..<4097)
        XCTAssertThrowsError(try read(drive, at: 0, count: 8192)) { XCTAssertEqual(($0 as? LunError)?.errno, EIO) }
        XCTAssertEqual(try read(drive, at: 0, count: 4096), Array(pattern(8192, seed: 18)[0..<4096]))
        drive.clearRangeFaults()
        drive.failNextRead()
        XCTAssertThrowsError(try read(drive, at: 0, count: 16))
        XCTAssertNoThrow(try read(drive, at: 0, count: 16))

        drive.failNextWrite()
        XCTAssertThrowsError(try write(drive, pattern(512, seed: 19), at: 0))
        XCTAssertEqual(try read(drive, at: 0, count: 512), Array(pattern(8192, seed: 18)[0..<512]), "nothing landed")
        drive.failWrites(in: 1 << 20..<2 << 20)
        XCTAssertThrowsError(try write(drive, [1], at: (2 << 20) - 1))
        XCTAssertNoThrow(try write(drive, [1], at: 2 << 20))

        drive.faultProbabilities = FaultProbabilities(readErrorProbability: 1)
        XCTAssertThrowsError(try read(drive, at: 0, count: 1))
        drive.stopInjecting()
        XCTAssertNoThrow(try read(drive, at: 0, count: 1))
        XCTAssertNoThrow(try write(drive, [1], at: (1 << 20)))
        drive.resumeInjecting()
        XCTAssertThrowsError(try read(drive, at: 0, count: 1))

        let counters = drive.counters
        XCTAssertEqual(counters.readErrors, 4)
        XCTAssertEqual(counters.writeErrors, 2)
        XCTAssertEqual(counters.faultsInjected, 6)
    }

    func testCorruptedReadsFlipOneBitPerSectorAndLeaveTheMediumGood() throws {
        let drive = SimulatedDrive(name: "s", sizeBytes: gib, seed: 20)
        let data = pattern(8192, seed: 21)
        try write(drive, data, at: 0)
        drive.corruptReads(in: 1000..<3000)  // touches sectors 1...5 (partly 1 and 5)
        let found = try read(drive, at: 0, count: 8192)
        for s in 0..<16 {
            let range = s * 512..<(s + 1) * 512
            let flippedBits = zip(found[range], data[range]).map { ($0 ^ $1).nonzeroBitCount }.reduce(0, +)
            XCTAssertEqual(flippedBits, (1...5).contains(s) ? 1 : 0, "sector \(s)")
        }
        let differing = zip(found, data).enumerated().filter { $1.0 != $1.1 }.map(\.offset)
        XCTAssertTrue(differing.allSatisfy { (1000..<3000).contains($0) })
        XCTAssertEqual(drive.contents(at: 0, count: 8192), data)

        drive.clearRangeFaults()
        drive.corruptNextRead()
        let once = try read(drive, at: 0, count: 8192)
        XCTAssertEqual(zip(once, data).map { ($0 ^ $1).nonzeroBitCount }.reduce(0, +), 1)
        XCTAssertEqual(try read(drive, at: 0, count: 8192), data)
        XCTAssertEqual(drive.counters.corruptedReads, 2)
    }

    func testDisappearingDrive() throws {
        let drive = SimulatedDrive(name: "s", sizeBytes: gib, seed: 22)
        drive.disappear(afterWrites: 2)
        try write(drive, [1], at: 0)
        try write(drive, [2], at: 1)
        XCTAssertFalse(drive.isPresent)
        XCTAssertThrowsError(try read(drive, at: 0, count: 1))
        XCTAssertThrowsError(try write(drive, [3], at: 2))
        XCTAssertThrowsError(try drive.zero(at: 0, length: 512))
        XCTAssertThrowsError(try drive.sync())
        drive.stopInjecting()
        XCTAssertThrowsError(try drive.sync(), "a gone drive stays gone")
        XCTAssertEqual(drive.counters.disappearances, 1)
        XCTAssertEqual(drive.counters.refusedCalls, 5)

        let after = drive.crash(seed: 1, tearing: .keepUnsynced)
        XCTAssertEqual(try read(after, at: 0, count: 3), [1, 2, 0])

        let chance = SimulatedDrive(name: "c", sizeBytes: gib, seed: 23,
                                    faults: FaultProbabilities(disappearanceProbability: 0.01))
        var calls = 0
        while chance.isPresent { _ = try? read(chance, at: 0, count: 1); calls += 1 }
        XCTAssertEqual(chance.counters.disappearances, 1)
        XCTAssertLessThan(calls, 2000)
    }

    func testMisdirectedWrite() throws {
        let drive = SimulatedDrive(name: "s", sizeBytes: gib, seed: 24)
        let old = pattern(65536, seed: 25)
        try write(drive, old, at: 0)
        let data = pattern(4096, seed: 26)
        drive.misdirectNextWrite(shiftBytes: 4096)
        try write(drive, data, at: 8192)
        XCTAssertEqual(try read(drive, at: 8192, count: 4096), Array(old[8192..<12288]), "intended place unchanged")
        XCTAssertEqual(try read(drive, at: 12288, count: 4096), data)

        // Random misdirections land a non-zero whole number of sectors away, within 16 sectors.
        let random = SimulatedDrive(name: "r", sizeBytes: gib, seed: 27,
                                    faults: FaultProbabilities(misdirectedWriteProbability: 1))
        for i in 0..<20 {
            let offset = UInt64(i) * (1 << 20) + (1 << 19)
            let bytes = pattern(1024, seed: UInt64(i))
            try write(random, bytes, at: offset)
            random.stopInjecting()
            let window = try read(random, at: offset - 8192, count: 16384 + 1024)
            random.resumeInjecting()
            XCTAssertEqual(Array(window[8192..<9216]) == bytes, false)
            let landedAt = (0...16384).first { Array(window[$0..<($0 + 1024)]) == bytes }
            let shift = try XCTUnwrap(landedAt) - 8192
            XCTAssertTrue(shift != 0 && shift % 512 == 0 && abs(shift) <= 8192, "shift \(shift)")
        }
        XCTAssertEqual(random.counters.misdirectedWrites, 20)

        // A crash treats the misdirected bytes as written where they landed.
        let after = drive.crash(seed: 1, tearing: .keepUnsynced)
        XCTAssertEqual(try read(after, at: 12288, count: 4096), data)
        XCTAssertEqual(try read(after, at: 8192, count: 4096), Array(old[8192..<12288]))
    }

    func testCrashMisdirectsUnsyncedWritesUpToItsCap() throws {
        // 40 writes of 2 KiB, 64 KiB apart, over a synced pattern; every one rolls "misdirected".
        let background = pattern(40 * 65536, seed: 40)
        let sent: [(offset: UInt64, bytes: [UInt8])] = (0..<40).map { i in
            (UInt64(i) * 65536 + 16384, pattern(2048, seed: UInt64(i) + 41))
        }
        func crashed(cap: Int) throws -> SimulatedDrive {
            let drive = SimulatedDrive(name: "m", sizeBytes: gib, seed: 30)
            try write(drive, background, at: 0)
            try drive.sync()
            for w in sent { try write(drive, w.bytes, at: w.offset) }
            let everyOneMisdirected = CrashTearing(landedWeight: 0, tornPrefixWeight: 0, tornSubsetWeight: 0, lostWeight: 0,
                                                   misdirectedWeight: 1, misdirectedWritesMax: cap)
            return drive.crash(seed: 31, tearing: everyOneMisdirected)
        }
        let capped = try crashed(cap: 3)
        XCTAssertEqual(capped.counters.crashMisdirected, 3)
        XCTAssertEqual(capped.counters.crashLanded, sent.count - 3)
        var misdirected = 0
        for w in sent {
            let window = try read(capped, at: w.offset - 8192, count: 8192 + 2048 + 8192)
            if Array(window[8192..<10240]) == w.bytes { continue }
            // The intended place kept the synced bytes; the write is whole, a few sectors away.
            XCTAssertEqual(Array(window[8192..<10240]), Array(background[Int(w.offset)..<Int(w.offset) + 2048]))
            let landedAt = try XCTUnwrap((0...16384).first { Array(window[$0..<($0 + 2048)]) == w.bytes })
            let shift = landedAt - 8192
            XCTAssertTrue(shift != 0 && shift % 512 == 0 && abs(shift) <= 8192, "shift \(shift)")
            misdirected += 1
        }
        XCTAssertEqual(misdirected, 3)
        XCTAssertEqual(try crashed(cap: .max).counters.crashMisdirected, sent.count)
    }

    func testChanceFaultsAreReproducibleFromSeed() throws {
        let faults = FaultProbabilities(readErrorProbability: 0.1, readCorruptionProbability: 0.1,
                                        writeErrorProbability: 0.1, misdirectedWriteProbability: 0.1)
        func run() -> ([String], FaultCounters, [UInt8]) {
            let drive = SimulatedDrive(name: "s", sizeBytes: gib, seed: 28, faults: faults)
            var log: [String] = []
            for i in 0..<300 {
                let offset = UInt64(i % 50) * 16384 + 65536
                do {
                    if i % 2 == 0 {
                        try write(drive, pattern(4096, seed: UInt64(i)), at: offset)
                        log.append("w")
                    } else {
                        log.append("r\(try read(drive, at: offset, count: 4096).hashValue)")
                    }
                } catch {
                    log.append("e")
                }
            }
            return (log, drive.counters, drive.contents(at: 0, count: 1 << 20))
        }
        let (a, b) = (run(), run())
        XCTAssertEqual(a.0, b.0)
        XCTAssertEqual(a.1, b.1)
        XCTAssertEqual(a.2, b.2)
        XCTAssertGreaterThan(a.1.faultsInjected, 30)
        print("SimulatedDriveTests chance faults, seed 28: \(a.1)")
    }

    // MARK: Drive sets

    func testDriveSetCrashesAllDrivesFromOneSeed() throws {
        func run(seed: UInt64) throws -> (SimulatedDriveSet, [[UInt8]]) {
            var set = SimulatedDriveSet(count: 8, sizeBytes: 16 * gib, seed: 29)
            for (i, drive) in set.devices.enumerated() {
                try write(drive, pattern(8192, seed: UInt64(i)), at: 15 * gib)
                try drive.sync()
                for j in 0..<8 { try write(drive, pattern(4096, seed: UInt64(i * 100 + j)), at: UInt64(j) * 4096) }
            }
            let old = set.drives
            set.crash(seed: seed)
            XCTAssertTrue(old.allSatisfy { !$0.isPresent })
            XCTAssertTrue(set.drives.allSatisfy { $0.isPresent })
            for (i, drive) in set.devices.enumerated() {
                XCTAssertEqual(try read(drive, at: 15 * gib, count: 8192), pattern(8192, seed: UInt64(i)))
            }
            return (set, try set.devices.map { try read($0, at: 0, count: 32768) })
        }
        let (set, first) = try run(seed: 30)
        XCTAssertEqual(try run(seed: 30).1, first)
        XCTAssertNotEqual(try run(seed: 31).1, first)
        XCTAssertEqual(set.count, 8)
        XCTAssertEqual(set.counters.crashes, 8)
        XCTAssertEqual(set.counters.crashLanded + set.counters.crashTornPrefix + set.counters.crashTornSubset
            + set.counters.crashLost, 64)
        XCTAssertEqual(set[3].name, "sim3")
    }

    func testSeededRandom() {
        var a = SeededRandom(seed: 7)
        var b = SeededRandom(seed: 7)
        XCTAssertEqual((0..<10).map { _ in a.next() }, (0..<10).map { _ in b.next() })
        var counts = [0, 0, 0]
        for _ in 0..<3000 { counts[Int(a.below(3))] += 1 }
        XCTAssertTrue(counts.allSatisfy { $0 > 900 && $0 < 1100 }, "\(counts)")
        XCTAssertFalse(a.chance(0))
        XCTAssertTrue(a.chance(1))
    }
}

// MARK: Helpers

private func write(_ drive: any BlockDevice, _ bytes: [UInt8], at offset: UInt64) throws {
    try bytes.withUnsafeBytes { buffer in try drive.write(buffer, at: offset) }
}

private func read(_ drive: any BlockDevice, at offset: UInt64, count: Int) throws -> [UInt8] {
    var bytes = [UInt8](repeating: 0xEE, count: count)
    try bytes.withUnsafeMutableBytes { buffer in try drive.read(into: buffer, at: offset) }
    return bytes
}

private func pattern(_ count: Int, seed: UInt64) -> [UInt8] {
    var random = SeededRandom(seed: seed &+ 0xABCD)
    return (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next() | 1) }  // never zero
}

private func zeros(_ count: Int) -> [UInt8] { [UInt8](repeating: 0, count: count) }
