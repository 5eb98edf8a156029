// Helpers shared by the engine tests: pools on in-memory drives, seeded random bytes, and
// whole-image comparison.
import XCTest
@testable import LunEngine
import LunEngineTesting

typealias TestRandom = SeededRandom

/// Drives that outlive the pools opened on them, so a test can close and reopen.
final class MemoryDrives {
    let devices: [MemoryDevice]
    init(count: Int, sizeBytes: UInt64) {
        devices = (0..<count).map { MemoryDevice(name: "mem\($0)", sizeBytes: sizeBytes) }
    }
    func format(raid: RAIDLevel) throws {
        try Pool.format(devices: devices, raid: raid)
    }
    /// A read-write open with drives missing marks them stale: when they come back they are
    /// rebuilt, and refused if a drive they need for that is missing then. Degraded reads that
    /// must not change the pool open read-only.
    func open(missing: Set<Int> = [], readOnly: Bool = false) throws -> Pool {
        try Pool.open(devices: devices.enumerated().map { missing.contains($0.offset) ? nil : $0.element },
                      sizes: devices.map(\.sizeBytes), readOnly: readOnly)
    }
}

extension Pool {
    func write(_ id: DiskID, at offset: UInt64, _ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write(id, at: offset, from: $0) }
    }
    func readBytes(_ id: DiskID, at offset: UInt64, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0xEE, count: count)
        let n = try out.withUnsafeMutableBytes { try read(id, at: offset, into: $0) }
        return Array(out[0..<n])
    }
    func image(_ id: DiskID) throws -> [UInt8] {
        try readBytes(id, at: 0, count: Int(info(id)!.sizeBytes))
    }
}

/// Byte-for-byte equality that stays fast in debug builds and prints the first difference,
/// not two multi-megabyte arrays.
func assertSameBytes(_ actual: [UInt8], _ expected: [UInt8], _ message: @autoclosure () -> String = "",
                     file: StaticString = #filePath, line: UInt = #line) {
    if sameBytes(actual, expected) { return }
    let first = (0..<min(actual.count, expected.count)).first { actual[$0] != expected[$0] }
    XCTFail("\(message()): sizes \(actual.count) and \(expected.count), first difference at \(first.map(String.init) ?? "the end")",
            file: file, line: line)
}

func sameBytes(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    if a.isEmpty { return true }
    return a.withUnsafeBytes { x in b.withUnsafeBytes { y in memcmp(x.baseAddress!, y.baseAddress!, a.count) == 0 } }
}

/// What the threads of a threaded test found wrong, gathered for one assertion at the end.
final class ThreadFailures: @unchecked Sendable {
    let lock = NSLock()
    var messages: [String] = []
    func add(_ m: String) { lock.withLock { messages.append(m) } }
}

/// Each disk's expected bytes, shared by the threads of a threaded test.
final class ThreadModels: @unchecked Sendable {
    let lock = NSLock()
    var images: [DiskID: [UInt8]] = [:]
}

/// A thread that commits `pool` every few milliseconds until `stop`, noting failures: the
/// committer of the threaded tests.
final class BackgroundCommitter {
    private let running = AtomicFlag(true)
    private let thread: Thread

    init(_ pool: Pool, failures: ThreadFailures, pauseMicroseconds: UInt32 = 2000) {
        let running = self.running
        thread = Thread {
            while running.value.load(ordering: .acquiring) {
                do { try pool.commit() } catch { failures.add("commit: \(error)") }
                usleep(pauseMicroseconds)
            }
        }
        thread.start()
    }

    /// Returns once the thread has made its last commit.
    func stop() {
        running.value.store(false, ordering: .releasing)
        while !thread.isFinished { usleep(1000) }
    }
}
