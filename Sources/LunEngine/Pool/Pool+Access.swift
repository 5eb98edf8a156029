// chmod and chown of a disk's directory or image, kept in the pool: a field of the disk
// record (DiskRecord), logged with `putDisk` like every other persistent field and committed
// before the call returns, as the namespace changes are.

extension Pool {
    /// Sets the mode and owner one of a disk's nodes shows. `.notFound` for a missing disk,
    /// `.notFound` too for the image of a disk that has none.
    public func setAccess(_ id: DiskID, of node: DiskNode, _ access: NodeAccess) throws(LunError) {
        try checkWritable()
        let changed = try stateLock.withLock { () throws(LunError) -> Bool in
            guard let d = state.disk(id) else { throw .notFound("disk \(id)") }
            switch node {
            case .directory:
                guard d.directoryAccess != access else { return false }
                state.update(d) { $0.directoryAccess = access }
            case .image:
                guard d.hasImage else { throw .notFound("\(d.name) has no image") }
                guard d.imageAccess != access else { return false }
                state.update(d) { $0.imageAccess = access }
            }
            return true
        }
        if changed { try commit() }
    }
}
