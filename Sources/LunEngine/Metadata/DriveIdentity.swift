// Which pool a drive belongs to and which slot it fills, read from its own superblocks before
// the pool trusts a byte on it. Every drive carries an identity (pool UUID, its index, the
// generation up to which it is current), so a drive list with two lines swapped is put back
// in order, and a blank, foreign, truncated or misplaced drive is treated as missing instead of
// being read as if it held the pool's data. See docs/DESIGN.md, section 2 ("Drive identity").

/// What one device in a slot turned out to be.
enum DriveIdentityKind: Equatable {
    /// Holds a superblock of this pool.
    case member
    /// No valid superblock at all (an empty file, a wiped disk).
    case blank
    /// A superblock of another pool.
    case foreign
}

/// The drives of a pool in slot order, after their identities were checked.
struct DriveResolution {
    /// Slot `i` holds the drive whose identity says index `i`, nil when it is missing.
    var devices: [BlockDevice?]
    /// The size the pool uses for each slot: the recorded one when known (a grown drive is
    /// used with its recorded size), else the device's.
    var sizes: [UInt64]
    /// For each slot, the position in the caller's list it came from (drives.list lines).
    var origins: [Int]
    /// The newest valid superblock of each slot's drive, for members.
    var identities: [Superblock?]
    /// Slots holding a blank or foreign drive: present, but nothing on them is the pool's.
    /// They are given a fresh identity and rebuilt from redundancy.
    var replacements: Set<Int> = []
    /// The replacements that hold another pool's superblock (the others are blank).
    var foreign: Set<Int> = []
    var notes: [String] = []

    var isReordered: Bool { origins != Array(0..<origins.count) }
}

enum DriveIdentity {
    /// The newest valid superblock on a device (either slot), nil when neither decodes.
    static func read(_ device: BlockDevice) -> Superblock? {
        var best: Superblock?
        for offset in Superblock.slotOffsets {
            var block = [UInt8](repeating: 0, count: Superblock.blockSize)
            guard offset + UInt64(Superblock.blockSize) <= device.sizeBytes,
                  (try? typed({ try block.withUnsafeMutableBytes { try device.read(into: $0, at: offset) } })) != nil,
                  let sb = try? Superblock.decode(block) else { continue }
            if best == nil || sb.generation > best!.generation { best = sb }
        }
        return best
    }

    /// A drive's identity block for `slot` of the pool whose superblock is `pool`: a
    /// replacement holds no data until it is rebuilt, and is current through no generation.
    static func freshIdentity(from pool: Superblock, slot: Int) -> Superblock {
        var sb = pool
        sb.driveIndex = UInt32(slot)
        sb.generation = 0
        sb.currentThrough = 0
        sb.identityFlags = Superblock.replacementFlag
        sb.flags = 0
        return sb
    }

    /// Writes `identity` into both superblock slots of a device (overwriting a foreign pool's).
    static func write(_ identity: Superblock, to device: BlockDevice) throws(LunError) {
        let bytes = identity.encode()
        for offset in Superblock.slotOffsets {
            try typed { try bytes.withUnsafeBytes { try device.write($0, at: offset) } }
        }
        try device.sync()
    }

    /// Checks every present device's identity and returns the drives in slot order.
    /// `recorded` gives the size drives.list records for each line (nil: not known).
    ///
    /// - A drive smaller than recorded (truncated) is missing; a larger one (grown) is used
    ///   with its recorded size.
    /// - The pool is the UUID most drives carry (a tie goes to the one with the newest
    ///   generation). A drive without a valid superblock is blank, one of another pool
    ///   foreign: both are replacements, missing until rebuilt.
    /// - Members whose recorded indexes are distinct and in range are put in the slots they
    ///   name (lines swapped in drives.list); otherwise a member in a slot other than its
    ///   index is treated as missing.
    static func resolve(devices given: [BlockDevice?], recorded: [UInt64]?) -> DriveResolution {
        let count = given.count
        var devices = given
        var notes: [String] = []
        var sizes = (0..<count).map { i in recorded?[i] ?? given[i]?.sizeBytes ?? 0 }
        for i in 0..<count {
            guard let device = devices[i], let want = recorded?[i], want > 0 else {
                if let device = devices[i], sizes[i] == 0 { sizes[i] = device.sizeBytes }
                continue
            }
            if device.sizeBytes < want {
                notes.append("drive \(i) (\(device.name)) is \(device.sizeBytes) bytes, smaller than the \(want) recorded: truncated, treated as missing")
                devices[i] = nil
            } else if device.sizeBytes > want {
                notes.append("drive \(i) (\(device.name)) has grown to \(device.sizeBytes) bytes; using the \(want) recorded")
            }
        }
        var found: [Superblock?] = devices.map { $0.flatMap(read) }
        // A drive list without sizes (older pools): the size the drive's superblock records.
        for i in 0..<count where (recorded?[i] ?? 0) == 0 {
            guard let want = found[i]?.driveSizeBytes, want > 0, let device = devices[i] else { continue }
            if device.sizeBytes > want {
                notes.append("drive \(i) (\(device.name)) has grown to \(device.sizeBytes) bytes; using the \(want) its superblock records")
                sizes[i] = want
            } else if device.sizeBytes < want {
                notes.append("drive \(i) (\(device.name)) is \(device.sizeBytes) bytes, smaller than the \(want) its superblock records: truncated, treated as missing")
                devices[i] = nil
                found[i] = nil
            }
        }
        // The pool's UUID: most votes, then the newest generation.
        var votes: [[UInt8]: (count: Int, generation: UInt64)] = [:]
        for sb in found.compactMap({ $0 }) {
            let v = votes[sb.poolUUID] ?? (0, 0)
            votes[sb.poolUUID] = (v.count + 1, max(v.generation, sb.generation))
        }
        let uuid = votes.max { a, b in (a.value.count, a.value.generation) < (b.value.count, b.value.generation) }?.key
        var kinds: [DriveIdentityKind?] = (0..<count).map { i in
            guard devices[i] != nil else { return nil }
            guard let sb = found[i] else { return .blank }
            return sb.poolUUID == uuid ? .member : .foreign
        }
        for i in 0..<count {
            switch kinds[i] {
            case .blank?: notes.append("drive \(i) (\(devices[i]!.name)) holds no lunfs superblock: blank, treated as missing and rebuilt from redundancy (unless it is a mirror holding the current metadata)")
            case .foreign?: notes.append("drive \(i) (\(devices[i]!.name)) belongs to another pool: treated as missing and rebuilt from redundancy")
            default: break
            }
        }
        // Members in the slots their identities name.
        let members = (0..<count).filter { kinds[$0] == .member }
        let indexes = members.map { Int(found[$0]!.driveIndex) }
        var origins = Array(0..<count)
        if indexes.allSatisfy({ $0 < count }) && Set(indexes).count == indexes.count {
            if zip(members, indexes).contains(where: { $0 != $1 }) {
                var slotOf = [Int?](repeating: nil, count: count)
                for (from, to) in zip(members, indexes) { slotOf[to] = from }
                // The other lines (missing drives, replacements) fill the free slots in order.
                var rest = (0..<count).filter { !members.contains($0) }.makeIterator()
                for slot in 0..<count where slotOf[slot] == nil { slotOf[slot] = rest.next() }
                origins = slotOf.map { $0! }
                let moved = (0..<count).filter { origins[$0] != $0 }
                notes.append("drives were listed out of order: " + moved.map { "drive \($0) is \(given[origins[$0]]?.name ?? "line \(origins[$0] + 1)")" }.joined(separator: ", ") + "; put back in the slots their superblocks name")
            }
        } else {
            for (slot, index) in zip(members, indexes) where slot != index {
                notes.append("drive \(slot) (\(devices[slot]!.name)) says it is drive \(index): treated as missing")
                devices[slot] = nil
                kinds[slot] = nil
            }
        }
        var resolution = DriveResolution(devices: origins.map { devices[$0] }, sizes: origins.map { sizes[$0] },
                                         origins: origins, identities: origins.map { kinds[$0] == .member ? found[$0] : nil })
        resolution.replacements = Set((0..<count).filter { kinds[origins[$0]] == .blank || kinds[origins[$0]] == .foreign })
        resolution.foreign = Set((0..<count).filter { kinds[origins[$0]] == .foreign })
        resolution.notes = notes
        return resolution
    }
}
