// The pages of the drives' checksum areas that reads touch, kept in memory, so that a small
// read costs one pread (its data) instead of two. One 4 KiB page holds the checksums of 1,024
// blocks (4 MiB of one drive), so a few thousand pages cover the working set of a busy pool.
//
// Writes still put their checksums on the drive at once, next to their data, and then into
// the page here if it is in memory (a file drive takes them into a shared mapping of its
// checksum area: the host page cache, as a pwrite, without the system call; FileDevice).
// Deferring them to the commit would save that per write but widen the window in which a
// drive holds data without its checksum from one device call to a commit interval, and
// recovery relies on that window being short: after a power cut, a mirror whose writes all
// landed must agree with its checksums so that it wins over a copy that a misdirected write
// garbled (the threaded crash simulation found exactly that case when the writes were
// deferred; docs/PERFORMANCE.md section 7).
//
// Why a page here never disagrees with its drive once a write has returned: the write updates
// the page after its drive write returned, under the page's lock; a load reads the drive under
// the same lock. A load before the update is corrected by the update; a load after it reads
// what the drive write put there (a pread sees a mapping's stores: both are the page cache).
import Synchronization

final class ChecksumPages: @unchecked Sendable {
    static let pageBytes = 4096
    static let sumsPerPage = pageBytes / ChecksumArea.checksumBytes
    /// Pages kept in memory by default: 16 MiB, the checksums of 16 GiB of data.
    static let defaultCapacity = 4096

    private let drives: DriveSet
    private let shards: [Shard]
    /// Pages read from the drives (for tests).
    let loads = Atomic<Int>(0)

    /// Each drive's checksum area starts where `drives.checksumAreaStart` says.
    init(drives: DriveSet, capacity: Int = ChecksumPages.defaultCapacity) {
        self.drives = drives
        let shardCount = 16
        shards = (0..<shardCount).map { _ in Shard(slots: max(1, capacity / shardCount)) }
    }

    /// One page of one drive: its number within the drive's checksum area.
    private struct PageID: Hashable {
        let drive: Int
        let page: UInt64
    }

    /// A fixed set of page slots with its own lock, swept by a clock hand.
    private final class Shard {
        let lock = Lock()
        let memory: UnsafeMutableRawPointer
        var ids: [PageID?]
        var slotOf: [PageID: Int] = [:]
        var referenced: [Bool]
        var hand = 0

        init(slots: Int) {
            memory = .allocate(byteCount: slots * ChecksumPages.pageBytes, alignment: ChecksumPages.pageBytes)
            ids = Array(repeating: nil, count: slots)
            referenced = Array(repeating: false, count: slots)
        }
        deinit { memory.deallocate() }

        func page(_ slot: Int) -> UnsafeMutableRawPointer { memory + slot * ChecksumPages.pageBytes }

        /// An empty slot, after forgetting the page the clock hand picks.
        func freeSlot() -> Int {
            while true {
                let slot = hand
                hand = (hand + 1) % ids.count
                guard let id = ids[slot] else { return slot }
                if referenced[slot] { referenced[slot] = false; continue }
                slotOf[id] = nil
                ids[slot] = nil
                return slot
            }
        }
    }

    @inline(__always)
    private func shard(_ id: PageID) -> Shard {
        shards[Int((id.page &* 0x9E37_79B9 &+ UInt64(id.drive) &* 0x85EB_CA6B) >> 7) & (shards.count - 1)]
    }

    /// Calls `body(shard, page id, first checksum index in the page, index in the caller's
    /// range, count)` for each page the checksums of blocks `first..<first+count` fall in, with
    /// the page's shard locked.
    private func forEachPage(_ drive: Int, first: UInt64, count: Int,
                             _ body: (Shard, PageID, Int, Int, Int) throws(LunError) -> Void) throws(LunError) {
        var done = 0
        while done < count {
            let block = first + UInt64(done)
            let id = PageID(drive: drive, page: block / UInt64(Self.sumsPerPage))
            let within = Int(block % UInt64(Self.sumsPerPage))
            let n = min(count - done, Self.sumsPerPage - within)
            let s = shard(id)
            s.lock.lock()
            defer { s.lock.unlock() }
            try body(s, id, within, done, n)
            done += n
        }
    }

    /// The stored checksums of `sums.count` blocks starting at block `first` of `drive`, from
    /// memory, or read from the drive (a whole page, kept) when the page is not in memory.
    func read(_ drive: Int, first: UInt64, into sums: UnsafeMutableBufferPointer<UInt32>) throws(LunError) {
        let out = UnsafeMutableRawPointer(sums.baseAddress!)
        try forEachPage(drive, first: first, count: sums.count) { (s, id, within, at, n) throws(LunError) in
            let slot: Int
            if let known = s.slotOf[id] {
                slot = known
            } else {
                slot = s.freeSlot()
                let at = drives.checksumAreaStart(drive) + id.page * UInt64(Self.pageBytes)
                try drives.read(drive, into: UnsafeMutableRawBufferPointer(start: s.page(slot), count: Self.pageBytes), at: at)
                loads.add(1, ordering: .relaxed)
                s.ids[slot] = id
                s.slotOf[id] = slot
            }
            s.referenced[slot] = true
            (out + at * 4).copyMemory(from: s.page(slot) + within * 4, byteCount: n * 4)
        }
    }

    /// Puts checksums that were just written to `drive` (the pwrite has returned) into the
    /// pages in memory that hold them; pages not in memory are left to be read when needed.
    func noteWritten(_ drive: Int, first: UInt64, _ sums: UnsafeBufferPointer<UInt32>) {
        let source = UnsafeRawPointer(sums.baseAddress!)
        try! forEachPage(drive, first: first, count: sums.count) { s, id, within, at, n in
            guard let slot = s.slotOf[id] else { return }
            (s.page(slot) + within * 4).copyMemory(from: source + at * 4, byteCount: n * 4)
        }
    }
}
