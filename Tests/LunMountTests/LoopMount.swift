// An image file attached to a loop device of its own and, optionally, mounted: what the tests
// that put a real file system inside a disk need. `release` undoes whatever is still in place
// (unmount, then losetup -d) and may be called any number of times, so a test calls it from a
// `defer` and no loop device outlives a failed test (a leftover one would keep the pool's
// mount busy and hold one of the machine's few loop devices).
import Foundation
import XCTest

final class LoopMount {
    let image: String
    /// The loop device, /dev/loopN.
    let device: String
    /// Where `mount` puts the file system.
    let target: String
    private(set) var isMounted = false
    private(set) var isAttached = true

    /// `losetup --find --show IMAGE`: a free loop device, read-write, backed by `image`.
    init(image: String, target: String) throws {
        let attached = try runProgram("losetup", ["--find", "--show", image])
        let device = attached.output.trimmingCharacters(in: .whitespacesAndNewlines)
        guard attached.status == 0, device.hasPrefix("/dev/loop") else {
            throw FixtureError("losetup --find --show \(image) failed (\(attached.status)): \(attached.errorOutput)")
        }
        self.image = image
        self.device = device
        self.target = target
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
    }

    func mount(_ options: [String] = []) throws {
        let result = try runProgram("mount", options + [device, target])
        guard result.status == 0 else {
            throw FixtureError("mount \(device) on \(target) failed (\(result.status)): \(result.errorOutput)")
        }
        isMounted = true
    }

    func unmount() throws {
        let result = try runProgram("umount", [target])
        guard result.status == 0 else {
            throw FixtureError("umount \(target) failed (\(result.status)): \(result.errorOutput)")
        }
        isMounted = false
    }

    func detach() throws {
        let result = try runProgram("losetup", ["-d", device])
        guard result.status == 0 else {
            throw FixtureError("losetup -d \(device) failed (\(result.status)): \(result.errorOutput)")
        }
        isAttached = false
    }

    /// Best effort, for failure paths: unmount (lazily if it is busy) and detach.
    func release() {
        if isMounted || isMountPoint(target) {
            if (try? unmount()) == nil { _ = try? runProgram("umount", ["-l", target]) }
            isMounted = false
        }
        if isAttached {
            if (try? detach()) == nil {
                // A device still busy after a lazy unmount goes once its last user does.
                _ = try? runProgram("losetup", ["-d", device])
                isAttached = false
            }
        }
    }
}
