// What the file system needs from a pool, as a protocol, so that the FUSE layer states its
// dependencies on the engine in one place and could serve a test double instead of `Pool`.
import LunEngine

protocol MountablePool: AnyObject, Sendable {
    func close() throws(LunError)
    func commit() throws(LunError)
    func usage() -> PoolUsage
    func disks() -> [DiskInfo]
    func info(_ id: DiskID) -> DiskInfo?
    func child(named name: String, of parent: DiskID?) -> DiskID?
    func children(of parent: DiskID?) -> [DiskID]
    func treePath(of id: DiskID) -> String?

    func createDisk(named name: String, raid: RAIDLevel?) throws(LunError) -> DiskID
    func createSnapshot(of id: DiskID, named name: String, reserved: Bool?, quiesceTimeoutSeconds: Double) throws(LunError) -> DiskID
    func deleteImage(_ id: DiskID) throws(LunError)
    func removeNode(_ id: DiskID) throws(LunError)
    func rename(_ id: DiskID, to name: String) throws(LunError)
    func setRAID(_ id: DiskID, _ level: RAIDLevel) throws(LunError)
    func setReserved(_ id: DiskID, _ reserved: Bool) throws(LunError)
    func setReserveSnapshots(_ id: DiskID, _ on: Bool) throws(LunError)
    func resize(_ id: DiskID, to sizeBytes: UInt64) throws(LunError)
    func moveToRoot(_ id: DiskID, as name: String) throws(LunError)
    func makeSnapclone(_ id: DiskID) throws(LunError)
    func revertSnapclone(_ id: DiskID) throws(LunError)
    func copyProgress(_ id: DiskID) -> CopyProgress?
    func createExternalSnapshot(of id: DiskID, named name: String, file: String, blockBytes: UInt32, quiesceTimeoutSeconds: Double) throws(LunError) -> DiskID
    func externalFile(of id: DiskID) -> String?
    func externalCopyProgress(_ id: DiskID) -> CopyProgress?
    func setAccess(_ id: DiskID, of node: DiskNode, _ access: NodeAccess) throws(LunError)

    func openDisk(_ id: DiskID) throws(LunError) -> OpenDisk
    func read(_ disk: OpenDisk, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(LunError) -> Int
    func write(_ disk: OpenDisk, at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(LunError)
    func read(_ id: DiskID, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(LunError) -> Int
    func write(_ id: DiskID, at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(LunError)
    func discard(_ id: DiskID, at offset: UInt64, length: UInt64) throws(LunError)
    func seek(_ id: DiskID, from offset: UInt64, data: Bool) throws(LunError) -> UInt64?
    func scrub(repair: Bool) -> ScrubReport

    func changeSummary(_ id: DiskID) throws(LunError) -> ChangeSummary?
    func readChanges(_ disk: OpenDisk, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(LunError) -> Int
    func seekChanges(_ id: DiskID, from offset: UInt64, data: Bool) throws(LunError) -> UInt64?

    func setOnFull(_ id: DiskID, _ policy: OnFullPolicy) throws(LunError)
    func setExpendable(_ id: DiskID, _ expendable: Bool) throws(LunError)
    func observeDroppedSnapshots(_ body: @escaping @Sendable (DroppedSnapshot) -> Void)
    func disk(atTreePath path: String) -> DiskID?
    func rollback(_ id: DiskID, to target: DiskID, beforeName: String?, quiesceTimeoutSeconds: Double) throws(LunError) -> RollbackOutcome
    func createGroupSnapshot(of ids: [DiskID], named name: String, quiesceTimeoutSeconds: Double) throws(LunError) -> [DiskID: DiskID]
}

extension Pool: MountablePool {}
