// The control socket's drive verbs (`lunfs drive add|remove|replace|list` on a mounted pool):
// each is one membership change of the engine (Pool+Drives.swift), made while the pool keeps
// serving I/O; leveling and emptying then run in the daemon's background (LevelingJob), and
// `status` shows them as jobs. docs/CONTROL.md describes the arguments and results.
import Foundation
import LunEngine

/// What `drive-add`, `drive-remove` and `drive-replace` answer.
public struct DriveChangeResult: Codable {
    /// Indexes the new drives got.
    public var added: [Int]
    /// For remove and replace: true when the drive held nothing and is gone already; false
    /// while leveling empties it (it is forgotten when it holds nothing).
    public var removed: Bool?

    public init(added: [Int], removed: Bool? = nil) { self.added = added; self.removed = removed }
}

extension ControlVerbs {
    static let driveVerbNames = ["drive-add", "drive-list", "drive-remove", "drive-replace"]

    mutating func addDriveVerbs(pool: Pool) {
        add("drive-list") { request throws(ControlFailure) in
            guard request.arguments.isEmpty else { throw ControlFailure(EINVAL, "drive-list takes no arguments") }
            return try Self.encodeResult(statusDrives(pool, live: true))
        }
        add("drive-add") { request throws(ControlFailure) in
            try Self.only(request, ["paths", "force"])
            guard let paths = request.arguments["paths"] as? [String], !paths.isEmpty, paths.allSatisfy({ !$0.isEmpty }) else {
                throw ControlFailure(EINVAL, "drive-add needs \"paths\": a list of drive paths")
            }
            let force = try Self.flag(request, "force")
            let added = try Self.engine { () throws(LunError) in try pool.addDrives(paths: paths, force: force) }
            return try Self.encodeResult(DriveChangeResult(added: added))
        }
        add("drive-remove") { request throws(ControlFailure) in
            try Self.only(request, ["drive"])
            let drive = try Self.driveNumber(request)
            let gone = try Self.engine { () throws(LunError) in try pool.removeDrive(drive) }
            return try Self.encodeResult(DriveChangeResult(added: [], removed: gone))
        }
        add("drive-replace") { request throws(ControlFailure) in
            try Self.only(request, ["drive", "path", "force"])
            let drive = try Self.driveNumber(request)
            guard let path = request.arguments["path"] as? String, !path.isEmpty else {
                throw ControlFailure(EINVAL, "drive-replace needs \"path\": the new drive")
            }
            let force = try Self.flag(request, "force")
            let added = try Self.engine { () throws(LunError) in try pool.replaceDrive(drive, withPath: path, force: force) }
            return try Self.encodeResult(DriveChangeResult(added: [added], removed: pool.driveListing().allSatisfy { $0.index != drive }))
        }
    }

    private static func only(_ request: ControlRequest, _ names: Set<String>) throws(ControlFailure) {
        let unknown = Set(request.arguments.keys).subtracting(names)
        guard unknown.isEmpty else { throw ControlFailure(EINVAL, "\(request.verb) does not take \(unknown.sorted().joined(separator: ", "))") }
    }

    private static func flag(_ request: ControlRequest, _ name: String) throws(ControlFailure) -> Bool {
        guard let value = request.arguments[name] else { return false }
        guard let b = value as? Bool else { throw ControlFailure(EINVAL, "\"\(name)\" must be true or false") }
        return b
    }

    private static func driveNumber(_ request: ControlRequest) throws(ControlFailure) -> Int {
        guard let n = request.arguments["drive"] as? Int, n >= 0 else {
            throw ControlFailure(EINVAL, "\(request.verb) needs \"drive\": a drive index")
        }
        return n
    }

    /// An engine refusal as the answer carries it: its errno and its sentence.
    private static func engine<T>(_ body: () throws(LunError) -> T) throws(ControlFailure) -> T {
        do { return try body() } catch { throw ControlFailure(error.errno, error.description) }
    }
}
