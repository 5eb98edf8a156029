// The fixture every FUSE integration test stands on: a fresh pool in a temporary directory,
// mounted by the real `lunfs` binary, and torn down (unmounted, daemon gone, files removed)
// even when the test fails. Tests then use ordinary system calls and tools from outside.
// After a test that passed, the pool is unmounted and `lunfs check --scrub` must find it
// consistent: whatever a test does through the mount, the engine's metadata, free space and
// redundancy must still add up.
import Foundation
import XCTest

/// A completed child process.
struct ProgramResult {
    var status: Int32
    var output: String
    var errorOutput: String
}

/// Runs a program to completion, capturing its output in temporary files (never pipes: a
/// daemon the program leaves behind must not keep us waiting for end-of-file). The program is
/// looked up in PATH unless `executable` is a path. posix_spawn and waitpid rather than
/// Foundation's Process, whose exit monitoring stalled here when the child forked a daemon.
@discardableResult
func runProgram(_ executable: String, _ arguments: [String]) throws -> ProgramResult {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("lunfs-run-\(UUID().uuidString.prefix(8))")
    let outputPath = scratch.path + ".out", errorPath = scratch.path + ".err"
    defer { unlink(outputPath); unlink(errorPath) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_addopen(&actions, 2, errorPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    let words = [executable] + arguments
    var argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var child: pid_t = 0
    let started = executable.contains("/")
        ? posix_spawn(&child, executable, &actions, nil, &argv, environ)
        : posix_spawnp(&child, executable, &actions, nil, &argv, environ)
    guard started == 0 else { throw FixtureError("cannot start \(executable): \(String(cString: strerror(started)))") }
    var status: Int32 = 0
    while waitpid(child, &status, 0) < 0 {
        guard errno == EINTR else { throw FixtureError("waitpid: \(String(cString: strerror(errno)))") }
    }
    // WIFEXITED / WEXITSTATUS by hand; a signal shows as 128 + its number, as in a shell.
    let exitStatus = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
    let errorOutput = (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? ""
    return ProgramResult(status: exitStatus, output: output, errorOutput: errorOutput)
}

/// Starts a program without waiting for it (its output discarded); returns its pid.
func startProgram(_ executable: String, _ arguments: [String]) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    for fd: Int32 in 0...2 { posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", O_RDWR, 0) }
    let words = [executable] + arguments
    var argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var child: pid_t = 0
    let started = posix_spawn(&child, executable, &actions, nil, &argv, environ)
    guard started == 0 else { throw FixtureError("cannot start \(executable): \(String(cString: strerror(started)))") }
    return child
}

/// Waits for a started program; returns its exit status (128 + signal if killed), or nil if
/// it is still running after `timeoutSeconds`.
func waitForProgram(_ pid: pid_t, timeoutSeconds: Double) -> Int32? {
    let deadline = Date().addingTimeInterval(timeoutSeconds)
    var status: Int32 = 0
    repeat {
        let result = waitpid(pid, &status, WNOHANG)
        if result == pid { return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f) }
        usleep(20_000)
    } while Date() < deadline
    return nil
}

/// Where the `lunfs` binary under test is: $LUNFS_BINARY, or next to this test bundle in the
/// build's products directory (which follows --scratch-path).
func lunfsBinaryPath() throws -> String {
    if let override = ProcessInfo.processInfo.environment["LUNFS_BINARY"] { return override }
    let bundleExecutable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    var directory = bundleExecutable.deletingLastPathComponent()
    // The runner may live inside a .xctest directory; walk up to the products directory.
    for _ in 0..<4 {
        let candidate = directory.appendingPathComponent("lunfs").path
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: candidate, isDirectory: &isDirectory), !isDirectory.boolValue {
            return candidate
        }
        directory = directory.deletingLastPathComponent()
    }
    throw FixtureError("lunfs binary not found next to \(bundleExecutable.path); build it or set LUNFS_BINARY")
}

/// Skips (or, with LUNFS_REQUIRE_FUSE=1, fails) when this machine cannot mount FUSE.
func requireFUSE() throws {
    guard FileManager.default.fileExists(atPath: "/dev/fuse") else {
        if ProcessInfo.processInfo.environment["LUNFS_REQUIRE_FUSE"] == "1" {
            XCTFail("/dev/fuse is missing and LUNFS_REQUIRE_FUSE=1")
            throw FixtureError("no /dev/fuse")
        }
        throw XCTSkip("/dev/fuse is missing")
    }
}

struct FixtureError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

final class MountedPool {
    let binary: String
    /// The temporary directory holding everything: pool/, mnt/, and scratch files.
    let root: URL
    let poolPath: String
    let mountpoint: String
    private(set) var isMounted = false
    private let hangGuard: HangGuard
    /// Whether `MountTestCase` runs `lunfs check --scrub` after a test that passed. A test that
    /// damages the pool on purpose (drive files, metadata) sets this to false and says why.
    var checksAfterTest = true

    /// Creates a temporary directory and mounts a new pool of small drives there.
    /// `mountArguments` go to this first mount only (for instance `--nbd ADDRESS`).
    init(drives: Int = 5, driveSize: String = "256M", raid: String? = nil, mountArguments: [String] = []) throws {
        try requireFUSE()
        binary = try lunfsBinaryPath()
        root = FileManager.default.temporaryDirectory.appendingPathComponent("lunfs-test-\(UUID().uuidString.prefix(8))")
        poolPath = root.appendingPathComponent("pool").path
        mountpoint = root.appendingPathComponent("mnt").path
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        hangGuard = HangGuard(poolPath: poolPath)
        var extra = ["--create", "--drives", String(drives), "--drive-size", driveSize]
        if let raid { extra += ["--raid", raid] }
        try mount(extra + mountArguments)
    }

    /// `lunfs mount` of this pool; returns once the mount answers.
    /// $LUNFS_TEST_MOUNT_OPTIONS (for instance `-o no_writeback_cache`) goes to every mount,
    /// so that a run can take the mount tests through another mode.
    func mount(_ extraArguments: [String] = []) throws {
        var extraArguments = extraArguments
        // LUNFS_TEST_URING=off: the mount tests run on the /dev/fuse loop even where the
        // kernel offers io_uring (CI runs a subset both ways), unless a test chose itself.
        if ProcessInfo.processInfo.environment["LUNFS_TEST_URING"] == "off" && !extraArguments.contains(where: { $0.contains("uring=") }) {
            extraArguments += ["-o", "uring=off"]
        }
        let modeArguments = (ProcessInfo.processInfo.environment["LUNFS_TEST_MOUNT_OPTIONS"] ?? "")
            .split(separator: " ").map(String.init)
        let result = try lunfs(["mount", poolPath, mountpoint] + modeArguments + extraArguments)
        guard result.status == 0 else {
            throw FixtureError("lunfs mount failed (\(result.status)): \(result.errorOutput)\(logTail())")
        }
        isMounted = true
        // The notes' advice: never trust a mount before st_dev says it is there.
        guard try deviceOf(mountpoint) != deviceOf(root.path) else {
            throw FixtureError("mount returned 0 but \(mountpoint) is not a mount")
        }
    }

    /// `lunfs unmount`, which waits for the daemon to close (and commit) the pool.
    func unmount() throws {
        let result = try lunfs(["unmount", mountpoint])
        isMounted = false
        guard result.status == 0 else {
            throw FixtureError("lunfs unmount failed (\(result.status)): \(result.errorOutput)")
        }
    }

    func remount() throws {
        try unmount()
        try mount()
    }

    @discardableResult
    func lunfs(_ arguments: [String]) throws -> ProgramResult {
        try runProgram(binary, arguments)
    }

    /// A path inside the mount.
    func path(_ relative: String) -> String { mountpoint + "/" + relative }

    /// The end of the daemon log, for failure messages.
    func logTail() -> String {
        guard let log = try? String(contentsOfFile: poolPath + "/lunfs.log", encoding: .utf8) else { return "" }
        return "\n--- lunfs.log (end) ---\n" + log.split(separator: "\n").suffix(15).joined(separator: "\n")
    }

    /// Unmounts (waiting for the daemon to commit and exit) and runs `lunfs check --scrub` on
    /// the pool. Returns nil when the check exits 0; otherwise what went wrong, with the
    /// checker's output and the end of the daemon log. The pool stays unmounted.
    func unmountAndCheck() -> String? {
        do {
            if isMounted || isMountPoint(mountpoint) {
                try unmount()
            }
            let result = try lunfs(["check", "--scrub", poolPath])
            guard result.status == 0 else {
                return "lunfs check --scrub exited \(result.status) after the test:\n\(result.output)\(result.errorOutput)\(logTail())"
            }
            return nil
        } catch {
            return "unmount and check after the test failed: \(error)\(logTail())"
        }
    }

    /// Unmounts whatever is left (lazily if need be), stops the daemon, removes the files.
    func tearDown() {
        hangGuard.cancel()
        if isMounted { _ = try? unmount() }
        if isMountPoint(mountpoint) {
            _ = try? runProgram("fusermount3", ["-u", "-z", mountpoint])
        }
        if let pidText = try? String(contentsOfFile: poolPath + "/lunfs.pid", encoding: .utf8),
           let pid = pid_t(pidText.trimmingCharacters(in: .whitespacesAndNewlines)) {
            kill(pid, SIGKILL)
        }
        // Never delete through a live mount.
        if !isMountPoint(mountpoint) {
            try? FileManager.default.removeItem(at: root)
        }
    }
}

/// A test that hangs in a system call on the mount would hold CI for its whole budget. After
/// the limit ($LUNFS_TEST_TIMEOUT seconds, default 120) this kills the daemon: the kernel
/// then fails every pending request with ENOTCONN and the test fails instead of hanging.
final class HangGuard: @unchecked Sendable {
    private let lock = NSLock()
    private var cancelled = false

    init(poolPath: String) {
        let limit = Double(ProcessInfo.processInfo.environment["LUNFS_TEST_TIMEOUT"] ?? "") ?? 120
        DispatchQueue.global().asyncAfter(deadline: .now() + limit) { [self] in
            guard lock.withLock({ !cancelled }) else { return }
            guard let text = try? String(contentsOfFile: poolPath + "/lunfs.pid", encoding: .utf8),
                  let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { return }
            print("HangGuard: the test ran past \(limit) s; killing lunfs daemon \(pid)")
            kill(pid, SIGKILL)
        }
    }

    func cancel() { lock.withLock { cancelled = true } }
}

func deviceOf(_ path: String) throws -> UInt {
    var info = stat()
    guard stat(path, &info) == 0 else { throw FixtureError("stat \(path): \(String(cString: strerror(errno)))") }
    return UInt(info.st_dev)
}

func isMountPoint(_ path: String) -> Bool {
    guard let table = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return false }
    let escaped = path.replacingOccurrences(of: "\\", with: "\\134").replacingOccurrences(of: " ", with: "\\040")
    return table.split(separator: "\n").contains { $0.split(separator: " ").count > 4 && $0.split(separator: " ")[4] == escaped }
}

/// Base class: one fresh mounted pool per test, torn down afterwards.
class MountTestCase: XCTestCase {
    var pool: MountedPool!

    /// Drives of the pool each test gets, and their size; subclasses may override.
    var driveCount: Int { 5 }
    var driveSize: String { "256M" }

    override func setUpWithError() throws {
        pool = try MountedPool(drives: driveCount, driveSize: driveSize)
    }

    /// After a test that passed (a failure already says what is wrong, and may have left the
    /// pool half-way), the pool must unmount cleanly and pass `lunfs check --scrub`.
    override func tearDown() {
        // Not `hasSucceeded`: that stays false until the run has stopped, after tearDown.
        if let pool, pool.checksAfterTest, let run = testRun, run.totalFailureCount == 0,
           let problem = pool.unmountAndCheck() {
            XCTFail(problem)
        }
        pool?.tearDown()
        pool = nil
        super.tearDown()
    }
}
