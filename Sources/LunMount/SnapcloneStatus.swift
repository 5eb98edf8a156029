// The snapclone part of `lunfs status` for one disk: its copy's bytes, rate and time left,
// and its chain's frozen states (seed 002). Here rather than in the status command, so that
// a report built by the daemon (live figures) and one from a read-only open share it.
import LunEngine

/// A disk's snapclone copy estimate (nil unless copying) and its chain's frozen states (nil
/// for a disk without an image).
public func snapcloneStatus(_ pool: Pool, _ i: DiskInfo) -> (copy: CopyEstimate?, frozen: FrozenState?) {
    (i.kind == .snapclone ? pool.copyEstimate(i.id) : nil, i.hasImage ? pool.frozenState(i.id) : nil)
}
