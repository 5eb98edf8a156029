// `lunfs status` of a mounted pool asks the daemon through POOL/lunfs.sock (docs/CONTROL.md)
// and shows live figures: disks in file-tree order with kind, parent, depth and chain place,
// drives with size, use, error counters and state. The socket is root-only, answers one JSON
// line per connection, refuses bad requests with an errno, and goes away with the daemon.
import Foundation
import XCTest
import LunEngineTesting

final class StatusTests: MountTestCase {
    private var socketPath: String { pool.poolPath + "/lunfs.sock" }

    /// One request line to the control socket and its answer, as the wire carries them.
    private func ask(_ line: String) throws -> [String: Any] {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: Array(socketPath.utf8))
            raw[socketPath.utf8.count] = 0
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try check(connected, "connect \(socketPath)")
        let bytes = Array((line + "\n").utf8)
        XCTAssertEqual(bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }, bytes.count)
        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            answer += chunk[..<n]
        }
        XCTAssertEqual(answer.last, UInt8(ascii: "\n"), "one answer line")
        XCTAssertEqual(answer.filter { $0 == UInt8(ascii: "\n") }.count, 1, "exactly one line")
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(answer)) as? [String: Any])
    }

    private func statusJSON() throws -> [String: Any] {
        let status = try pool.lunfs(["status", "--json", pool.poolPath])
        XCTAssertEqual(status.status, 0, status.errorOutput)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(status.output.utf8)) as? [String: Any])
    }

    func testStatusOfAMountedPoolIsLiveAndListsDisksAsATree() throws {
        var rng = SeededRandom(seed: newSeed("testStatusOfAMountedPoolIsLiveAndListsDisksAsATree"))
        for name in ["web", "vm"] { try makeDirectory(pool.path(name)) }
        let fd = try openFile(pool.path("vm/disk.img"), O_WRONLY)
        try writeAll(fd, rng.bytes(4 << 20), at: 0)
        try makeDirectory(pool.path("vm/monday"))
        try makeDirectory(pool.path("vm/monday/early"))
        // Written after the last commit (mkdir commits; no fsync, and the background commit
        // comes every 5 s): the daemon counts it at once.
        try writeAll(fd, rng.bytes(3 << 20), at: 8 << 20)
        close(fd)
        let report = try statusJSON()
        XCTAssertEqual(report["live"] as? Bool, true, "the daemon answered")
        XCTAssertEqual(report["usedBytes"] as? Int, 7 << 20, "live: the write after the last commit counts")
        let disks = try XCTUnwrap(report["disks"] as? [[String: Any]])
        XCTAssertEqual(disks.map { $0["path"] as? String }, ["vm", "vm/monday", "vm/monday/early", "web"], "tree order")
        XCTAssertEqual(disks.map { $0["kind"] as? String }, ["disk", "snapshot", "snapshot", "disk"])
        XCTAssertEqual(disks.map { $0["parent"] as? String }, [nil, "vm", "vm/monday", nil])
        XCTAssertEqual(disks.map { $0["depth"] as? Int }, [0, 1, 2, 0])
        XCTAssertEqual(disks.map { $0["chainPosition"] as? Int }, [2, 1, 0, nil], "oldest first; web shares nothing")
        XCTAssertEqual(disks[0]["uniqueBytes"] as? Int, 3 << 20)
        XCTAssertEqual(disks[0]["sharedBytes"] as? Int, 4 << 20)
        let drives = try XCTUnwrap(report["drives"] as? [[String: Any]])
        XCTAssertEqual(drives.count, 5)
        for drive in drives {
            XCTAssertEqual(drive["state"] as? String, "online")
            XCTAssertGreaterThan(drive["sizeBytes"] as? Int ?? 0, 200 << 20)
            XCTAssertGreaterThan(drive["usedBytes"] as? Int ?? 0, 0, "every drive holds part of the RAID 5 stores")
            for counter in ["readErrors", "writeErrors", "checksumErrors", "repairs"] { XCTAssertEqual(drive[counter] as? Int, 0, counter) }
        }
        let health = try XCTUnwrap(report["health"] as? [String: Any])
        XCTAssertEqual(health["degraded"] as? Bool, false)

        let text = try pool.lunfs(["status", pool.poolPath])
        XCTAssertTrue(text.output.contains("live figures from the daemon"), text.output)
        XCTAssertTrue(text.output.contains("health: ok"), text.output)
        XCTAssertTrue(text.output.contains("\n    early  "), "a snapshot of a snapshot is indented twice: \(text.output)")

        // Unmounted: the last commit, from a read-only open, and no socket left behind.
        try pool.unmount()
        XCTAssertFalse(FileManager.default.fileExists(atPath: socketPath), "the daemon removes its socket")
        let offline = try statusJSON()
        XCTAssertEqual(offline["live"] as? Bool, false)
        XCTAssertEqual(offline["usedBytes"] as? Int, 7 << 20, "unmount committed everything")
    }

    func testControlSocketIsRootOnlyAndRefusesBadRequests() throws {
        var info = stat()
        try check(lstat(socketPath, &info))
        XCTAssertEqual(info.st_mode & S_IFMT, S_IFSOCK)
        XCTAssertEqual(info.st_mode & 0o777, 0o600)

        let verbs = try ask(#"{"verb":"verbs"}"#)
        XCTAssertEqual(verbs["ok"] as? Bool, true)
        XCTAssertTrue((verbs["result"] as? [String])?.contains("status") ?? false, "\(verbs)")
        let status = try ask(#"{"verb":"status"}"#)
        XCTAssertEqual((status["result"] as? [String: Any])?["pool"] as? String, pool.poolPath)

        let unknown = try ask(#"{"verb":"explode"}"#)
        XCTAssertEqual(unknown["ok"] as? Bool, false)
        XCTAssertEqual(unknown["errno"] as? Int, Int(EOPNOTSUPP))
        let garbage = try ask("status please")
        XCTAssertEqual(garbage["errno"] as? Int, Int(EINVAL))
        let noVerb = try ask(#"{"verbs":"status"}"#)
        XCTAssertEqual(noVerb["errno"] as? Int, Int(EINVAL))
        let extra = try ask(#"{"verb":"status","disk":"vm"}"#)
        XCTAssertEqual(extra["errno"] as? Int, Int(EINVAL), "status takes no arguments")

        // The drive verbs refuse bad arguments with an errno and change nothing.
        XCTAssertTrue((verbs["result"] as? [String])?.contains("drive-add") ?? false, "\(verbs)")
        XCTAssertEqual(try ask(#"{"verb":"drive-add"}"#)["errno"] as? Int, Int(EINVAL))
        XCTAssertEqual(try ask(#"{"verb":"drive-add","paths":["/nonexistent/lunfs-drive.img"]}"#)["errno"] as? Int, Int(ENOENT))
        XCTAssertEqual(try ask(#"{"verb":"drive-remove","drive":99}"#)["errno"] as? Int, Int(ENOENT))
        XCTAssertEqual(try ask(#"{"verb":"drive-remove","drive":"one"}"#)["errno"] as? Int, Int(EINVAL))
        XCTAssertEqual(try ask(#"{"verb":"drive-replace","drive":1}"#)["errno"] as? Int, Int(EINVAL))
        let list = try ask(#"{"verb":"drive-list"}"#)
        XCTAssertEqual((list["result"] as? [[String: Any]])?.count, 5, "\(list)")

        // Another user reaches neither the socket nor the drives.
        let other = try runProgram("setpriv", ["--reuid", "65534", "--regid", "65534", "--clear-groups", pool.binary, "status", pool.poolPath])
        XCTAssertNotEqual(other.status, 0, other.output)
        XCTAssertTrue(other.errorOutput.contains("daemon was not asked"), other.errorOutput)
        XCTAssertTrue(other.errorOutput.contains("Permission denied"), other.errorOutput)
    }
}
