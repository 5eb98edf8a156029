// Which disks are exports, under which names, and which are read-only: every disk and
// snapshot with an image is an export named by its tree path (`vm`, `vm/monday`); a
// snapshot (any disk with a parent) is read-only unless the server was started with
// `--nbd-writable`, and every export is read-only when the pool is.
import LunEngine

/// One export as a client sees it at the moment it attaches.
struct Export: Sendable {
    var name: String
    var disk: DiskID
    /// The size at attach time: the bounds every request of the connection is checked against.
    var sizeBytes: UInt64
    var isReadOnly: Bool
    var isSnapshot: Bool

    var transmissionFlags: UInt16 {
        var flags = TransmissionFlag.hasFlags | TransmissionFlag.sendFlush | TransmissionFlag.sendCache
            | TransmissionFlag.canMultiConnection
        if isReadOnly {
            flags |= TransmissionFlag.readOnly
        } else {
            flags |= TransmissionFlag.sendFUA | TransmissionFlag.sendTrim | TransmissionFlag.sendWriteZeroes
        }
        return flags
    }

    /// The text NBD_OPT_LIST and NBD_INFO_DESCRIPTION carry.
    var description: String {
        (isSnapshot ? "lunfs snapshot" : "lunfs disk") + (isReadOnly ? ", read-only" : "")
    }
}

struct ExportCatalog: Sendable {
    let pool: any ExportablePool
    /// `--nbd-writable`: snapshots are writable exports too.
    let writableSnapshots: Bool

    /// The export a client names, or nil: unknown name, or a disk whose image was deleted.
    func export(named name: String) -> Export? {
        guard let id = pool.disk(atTreePath: name), let info = pool.info(id), info.hasImage else { return nil }
        return export(of: info, named: name)
    }

    /// Every export, in tree-path order.
    func allExports() -> [Export] {
        pool.disks().filter(\.hasImage).compactMap { info in
            pool.treePath(of: info.id).map { export(of: info, named: $0) }
        }.sorted { $0.name < $1.name }
    }

    private func export(of info: DiskInfo, named name: String) -> Export {
        let isSnapshot = info.parent != nil
        return Export(name: name, disk: info.id, sizeBytes: info.sizeBytes,
                      isReadOnly: pool.readOnly || (isSnapshot && !writableSnapshots), isSnapshot: isSnapshot)
    }
}
