// An fsx-style run: a seeded random mix of writes, truncates, hole punches, zero ranges,
// snapshots and reads on one image, checked against an in-memory model after every step and
// every snapshot checked at the end. It exercises the kernel's page cache (kept across opens)
// together with the engine's discard, resize and copy-on-write.
import Foundation
import XCTest

final class RandomOperationsTests: MountTestCase {
    func testRandomOperationsMatchModel() throws {
        let seed = newSeed(#function)
        var random = SeededGenerator(seed: seed)
        try makeDirectory(pool.path("fsx"))
        let image = pool.path("fsx/disk.img")
        let maximumSize = 12 << 20
        var model: [UInt8] = []
        var snapshots: [(name: String, content: [UInt8])] = []
        var fd = try openFile(image, O_RDWR)
        defer { close(fd) }
        for step in 0..<300 {
            let operation = Int.random(in: 0..<100, using: &random)
            let offset = Int.random(in: 0..<maximumSize, using: &random)
            let length = Int.random(in: 1...min(maximumSize - offset, [4096, 70_000, 1 << 20, 3 << 20][step % 4]), using: &random)
            let what: String
            switch operation {
            case 0..<40:
                what = "write \(length) at \(offset)"
                let bytes = random.bytes(length)
                try writeAll(fd, bytes, at: offset)
                if model.count < offset + length { model += [UInt8](repeating: 0, count: offset + length - model.count) }
                model.replaceSubrange(offset..<offset + length, with: bytes)
            case 40..<50:
                what = "truncate to \(offset)"
                try check(ftruncate(fd, off_t(offset)))
                if offset < model.count { model.removeSubrange(offset...) } else { model += [UInt8](repeating: 0, count: offset - model.count) }
            case 50..<60:
                what = "punch \(length) at \(offset)"
                try allocate(fd, mode: FALLOC_FL_PUNCH_HOLE_FLAG | FALLOC_FL_KEEP_SIZE_FLAG, offset: offset, length: length)
                let end = min(offset + length, model.count)
                if offset < end { model.replaceSubrange(offset..<end, with: [UInt8](repeating: 0, count: end - offset)) }
            case 60..<65:
                what = "zero range \(length) at \(offset)"
                try allocate(fd, mode: 0x10 /* FALLOC_FL_ZERO_RANGE */, offset: offset, length: length)
                if model.count < offset + length { model += [UInt8](repeating: 0, count: offset + length - model.count) }
                model.replaceSubrange(offset..<offset + length, with: [UInt8](repeating: 0, count: length))
            case 65..<68:
                what = "snapshot"
                let name = "s\(step)"
                try makeDirectory(pool.path("fsx/\(name)"))
                snapshots.append((name, model))
            case 68..<70:
                what = "reopen"
                close(fd)
                fd = try openFile(image, O_RDWR)
            default:
                what = "read \(length) at \(offset)"
                let expected = offset < model.count ? Array(model[offset..<min(offset + length, model.count)]) : []
                let actual = try readBytes(fd, count: length, at: offset)
                guard actual == expected else {
                    let firstDifference = zip(actual, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(actual.count, expected.count)
                    XCTFail("seed \(seed) step \(step) \(what): first difference at \(offset + firstDifference) (read \(actual.count), expected \(expected.count))" + pool.logTail())
                    return
                }
            }
            var info = stat()
            try check(fstat(fd, &info))
            guard Int(info.st_size) == model.count else {
                XCTFail("seed \(seed) step \(step) \(what): size \(info.st_size), model \(model.count)" + pool.logTail())
                return
            }
        }
        XCTAssertEqual(try readWholeFile(image), model, "seed \(seed): final content")
        for snapshot in snapshots {
            XCTAssertEqual(try readWholeFile(pool.path("fsx/\(snapshot.name)/disk.img")), snapshot.content, "seed \(seed): snapshot \(snapshot.name)")
        }
    }
}
