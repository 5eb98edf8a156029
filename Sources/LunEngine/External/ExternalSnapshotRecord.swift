// What the pool's metadata keeps about a virtual snapshot on separate storage (VSS, seed 004):
// which disk it is a snapshot of, where its blocks and its validity map live, its block size,
// and whether the copy has finished. The snapshot's tree node is an ordinary disk record with
// the same id; this record is what makes its bytes come from the external file instead of the
// pool's stores. Logged as `MetadataOp.putExternal` and kept in every checkpoint.

struct ExternalSnapshotRecord: Equatable, Sendable {
    /// The VSS's own disk id (its node in the tree).
    var id: DiskID
    /// The disk V it is a snapshot of.
    var source: DiskID
    /// The raw image holding block i at offset i * blockBytes.
    var filePath: String
    /// The validity map beside it.
    var mapPath: String
    var blockBytes: UInt32
    /// V's size at the snapshot instant; the VSS never changes size.
    var sizeBytes: UInt64
    /// Every block was copied: the file alone is the snapshot and V is never read for it.
    var independent: Bool
    /// A random number also written in the validity map's header, so that a map left by
    /// another snapshot (or another pool) at the same path is never taken for this one's.
    var token: UInt64
    /// Its file or map could not be opened when V was about to change blocks it still needed:
    /// V went ahead, so the snapshot can no longer be read (EIO), ever.
    var lost = false

    var blockCount: Int { Int((sizeBytes + UInt64(blockBytes) - 1) / UInt64(blockBytes)) }

    func encode(into w: inout ByteWriter) {
        w.varint(UInt64(id)); w.varint(UInt64(source))
        w.string(filePath); w.string(mapPath)
        w.u32(blockBytes); w.u64(sizeBytes); w.u8((independent ? 1 : 0) | (lost ? 2 : 0)); w.u64(token)
    }

    static func decode(from r: inout ByteReader) throws(LunError) -> ExternalSnapshotRecord {
        let id = try r.varint(), source = try r.varint()
        let file = try r.string(), map = try r.string()
        let block = try r.u32(), size = try r.u64(), flags = try r.u8(), token = try r.u64()
        guard id <= UInt64(DiskID.max), source <= UInt64(DiskID.max), block >= 4096, block.nonzeroBitCount == 1,
              flags <= 3, !file.isEmpty, !map.isEmpty else {
            throw .corrupt("external snapshot record \(id): block size \(block), flags \(flags)")
        }
        return ExternalSnapshotRecord(id: DiskID(id), source: DiskID(source), filePath: file, mapPath: map,
                                      blockBytes: block, sizeBytes: size, independent: flags & 1 != 0, token: token, lost: flags & 2 != 0)
    }
}
