// Thin, errno-returning wrappers over the system calls the tests make against the mount, plus
// the ones Swift's Glibc module hides (xattrs, fallocate, O_DIRECT), looked up with dlsym.
import Foundation
import XCTest
import LunEngineTesting

#if arch(x86_64)
let O_DIRECT_FLAG: Int32 = 0o40000
#else
let O_DIRECT_FLAG: Int32 = 0o200000
#endif
let FALLOC_FL_KEEP_SIZE_FLAG: Int32 = 0x01
let FALLOC_FL_PUNCH_HOLE_FLAG: Int32 = 0x02
let SEEK_DATA_WHENCE: Int32 = 3
let SEEK_HOLE_WHENCE: Int32 = 4

/// The errno of a failed call, as a value a test can compare.
struct SystemError: Error, Equatable, CustomStringConvertible {
    var code: Int32
    var description: String { "errno \(code) (\(String(cString: strerror(code))))" }
}

@discardableResult
func check(_ result: Int32, _ what: @autoclosure () -> String = "") throws -> Int32 {
    if result < 0 { throw SystemError(code: errno) }
    return result
}

/// Runs `body` and returns the errno it failed with, or 0 on success.
func errnoOf(_ body: () throws -> Void) -> Int32 {
    do {
        try body()
        return 0
    } catch let error as SystemError {
        return error.code
    } catch {
        return -1
    }
}

func openFile(_ path: String, _ flags: Int32, _ mode: mode_t = 0o644) throws -> Int32 {
    try check(open(path, flags | O_CLOEXEC, mode))
}

func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int) throws {
    var done = 0
    while done < bytes.count {
        let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
        if n < 0 { throw SystemError(code: errno) }
        done += n
    }
}

func writeAll(_ fd: Int32, _ bytes: [UInt8], at offset: Int) throws {
    try bytes.withUnsafeBytes { try writeAll(fd, $0, at: offset) }
}

/// Reads `count` bytes at `offset` (fewer only at end of file).
func readBytes(_ fd: Int32, count: Int, at offset: Int) throws -> [UInt8] {
    var buffer = [UInt8](repeating: 0, count: count)
    var done = 0
    while done < count {
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset + done)) }
        if n < 0 { throw SystemError(code: errno) }
        if n == 0 { break }
        done += n
    }
    return Array(buffer[..<done])
}

func readWholeFile(_ path: String) throws -> [UInt8] {
    let fd = try openFile(path, O_RDONLY)
    defer { close(fd) }
    var info = stat()
    try check(fstat(fd, &info))
    return try readBytes(fd, count: Int(info.st_size), at: 0)
}

func fileSize(_ path: String) throws -> Int {
    var info = stat()
    try check(stat(path, &info))
    return Int(info.st_size)
}

func makeDirectory(_ path: String) throws { try check(mkdir(path, 0o755)) }

func statistics(_ path: String) throws -> statvfs {
    var result = statvfs()
    try check(statvfs(path, &result))
    return result
}

// MARK: Calls Swift's Glibc does not import

private func symbol<T>(_ name: String, as type: T.Type) -> T {
    // A nil handle is RTLD_DEFAULT on glibc: search every loaded library.
    guard let address = dlsym(nil, name) else {
        fatalError("no symbol \(name)")
    }
    return unsafeBitCast(address, to: type)
}

private typealias SetXattr = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeRawPointer?, Int, Int32) -> Int32
private typealias GetXattr = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeMutableRawPointer?, Int) -> Int
private typealias ListXattr = @convention(c) (UnsafePointer<CChar>, UnsafeMutablePointer<CChar>?, Int) -> Int
private typealias Fallocate = @convention(c) (Int32, Int32, off_t, off_t) -> Int32

private typealias RemoveXattr = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>) -> Int32
private typealias RenameAt2 = @convention(c) (Int32, UnsafePointer<CChar>, Int32, UnsafePointer<CChar>, UInt32) -> Int32

let XATTR_CREATE_FLAG: Int32 = 1
let XATTR_REPLACE_FLAG: Int32 = 2
let RENAME_NOREPLACE_FLAG: UInt32 = 1
let RENAME_EXCHANGE_FLAG: UInt32 = 2

/// setxattr(2); `flags` is 0, XATTR_CREATE_FLAG or XATTR_REPLACE_FLAG.
func setAttribute(_ path: String, _ name: String, _ value: String, flags: Int32 = 0) throws {
    let call = symbol("setxattr", as: SetXattr.self)
    let bytes = Array(value.utf8)
    try check(bytes.withUnsafeBytes { call(path, name, $0.baseAddress, $0.count, flags) })
}

func removeAttribute(_ path: String, _ name: String) throws {
    let call = symbol("removexattr", as: RemoveXattr.self)
    try check(call(path, name))
}

/// renameat2(2) between paths (AT_FDCWD); `flags` as RENAME_NOREPLACE_FLAG, RENAME_EXCHANGE_FLAG.
func renameWithFlags(_ from: String, _ to: String, flags: UInt32) throws {
    let call = symbol("renameat2", as: RenameAt2.self)
    try check(call(AT_FDCWD, from, AT_FDCWD, to, flags))
}

/// getxattr(2) into a buffer of `capacity` bytes.
func getAttribute(_ path: String, _ name: String, capacity: Int = 4096) throws -> String {
    let call = symbol("getxattr", as: GetXattr.self)
    precondition(capacity > 0)
    var buffer = [UInt8](repeating: 0, count: capacity)
    let n = buffer.withUnsafeMutableBytes { call(path, name, $0.baseAddress, $0.count) }
    if n < 0 { throw SystemError(code: errno) }
    return String(decoding: buffer[..<n], as: UTF8.self)
}

func listAttributes(_ path: String) throws -> [String] {
    let call = symbol("listxattr", as: ListXattr.self)
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = buffer.withUnsafeMutableBufferPointer { call(path, $0.baseAddress, $0.count) }
    if n < 0 { throw SystemError(code: errno) }
    return buffer[..<n].split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
}

private typealias CopyFileRange = @convention(c) (Int32, UnsafeMutablePointer<Int64>?, Int32, UnsafeMutablePointer<Int64>?, Int, UInt32) -> Int

/// copy_file_range(2) of `length` bytes between explicit offsets; returns the bytes copied.
func copyRange(from source: Int32, at sourceOffset: Int, to target: Int32, at targetOffset: Int, length: Int) throws -> Int {
    let call = symbol("copy_file_range", as: CopyFileRange.self)
    var sourcePosition = Int64(sourceOffset), targetPosition = Int64(targetOffset)
    let copied = call(source, &sourcePosition, target, &targetPosition, length, 0)
    if copied < 0 { throw SystemError(code: errno) }
    return copied
}

func allocate(_ fd: Int32, mode: Int32, offset: Int, length: Int) throws {
    let call = symbol("fallocate", as: Fallocate.self)
    try check(call(fd, mode, off_t(offset), off_t(length)))
}

// MARK: Test data

/// The tests' generator is the simulation's (SplitMix64): tests print their seeds.
typealias SeededGenerator = SeededRandom

/// Whether two byte ranges are equal (memcmp: element-wise == is slow in debug builds).
func sameBytes(_ a: ArraySlice<UInt8>, _ b: ArraySlice<UInt8>) -> Bool {
    a.count == b.count && a.withUnsafeBytes { x in b.withUnsafeBytes { y in a.isEmpty || memcmp(x.baseAddress!, y.baseAddress!, a.count) == 0 } }
}

/// A fresh seed, printed; LUNFS_TEST_SEED=N replays a run.
func newSeed(_ test: String) -> UInt64 {
    let seed = ProcessInfo.processInfo.environment["LUNFS_TEST_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 1...UInt64.max)
    print("\(test): seed \(seed)")
    return seed
}

/// A page-aligned buffer for O_DIRECT.
final class AlignedBuffer {
    let pointer: UnsafeMutableRawPointer
    let count: Int
    init(count: Int) {
        self.count = count
        pointer = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 4096)
    }
    deinit { pointer.deallocate() }
    var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: pointer, count: count) }
}
