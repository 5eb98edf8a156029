// What the NBD server needs from a pool, as a protocol: the same engine calls the mounted
// tree makes (read, write, discard, seek, commit) and the tree-path names, stated in one
// place so the server could serve a test double instead of `Pool`.
import LunEngine

public protocol ExportablePool: AnyObject, Sendable {
    var readOnly: Bool { get }
    func disks() -> [DiskInfo]
    func info(_ id: DiskID) -> DiskInfo?
    func treePath(of id: DiskID) -> String?
    func disk(atTreePath path: String) -> DiskID?

    func read(_ id: DiskID, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(LunError) -> Int
    func write(_ id: DiskID, at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(LunError)
    func discard(_ id: DiskID, at offset: UInt64, length: UInt64) throws(LunError)
    func seek(_ id: DiskID, from offset: UInt64, data: Bool) throws(LunError) -> UInt64?
    func commit() throws(LunError)
}

extension Pool: ExportablePool {}
