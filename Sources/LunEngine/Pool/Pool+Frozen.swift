// The frozen states of a disk's chain as the running pool has them (FrozenStates.swift), for
// `lunfs status --json` and `lunfs check`.

extension Pool {
    /// The Nw and invalid segment numbers of the disk's chain and its blocking flag; nil for
    /// an unknown disk. A read-only pool has none.
    public func frozenState(_ id: DiskID) -> FrozenState? {
        guard let d = try? liveDisk(id) else { return nil }
        return d.family.frozenState()
    }
}
