// The command lines of `lunfs mount` and `lunfs unmount`, parsed into values; the usage text
// lives here too, next to the parser it describes.
import LunEngine
import LunNBD

let mountUsage = """
    usage: lunfs mount POOL MOUNTPOINT [--foreground] [-o OPTION[,OPTION...]]
                       [--nbd ADDRESS [--nbd-writable]]
                       [--create [--drives N] [--drive-size SIZE] [--raid 0|1|5]]
           lunfs unmount [--lazy] MOUNTPOINT

    mount serves the pool in directory POOL at MOUNTPOINT. With --create, a missing POOL
    directory (its parent must exist) or an empty one first gets a new pool (--drives,
    default 8; --drive-size, default 16G, sparse files; --raid, default 5 with five or more
    drives); without it, mount only opens an existing pool.
    Without --foreground the file system runs as a daemon logging to POOL/lunfs.log, and
    mount returns once the mount is ready.

    --nbd ADDRESS also serves every disk and snapshot over NBD from the same daemon (a Unix
    socket path, or HOST:PORT); exports are named by tree path (vm, vm/monday), snapshots are
    read-only unless --nbd-writable.

    -o options: direct_io (images bypass the page cache), no_writeback_cache (each buffered
    write goes to the daemon before write(2) returns; by default the kernel's writeback cache
    holds it, and a write it cannot store fails the next fsync and close), max_threads=N
    (threads serving requests, default 16), uring=off (serve requests through /dev/fuse reads
    even when the kernel offers FUSE over io_uring; uring=auto, the default, uses it when
    offered), and any libfuse mount option (allow_other, ro, ...).

    unmount refuses while a process or loop device holds a file in the mount (and names
    them); --lazy detaches it anyway.
    """

struct MountArguments {
    var poolPath: String
    var mountpoint: String
    var foreground = false
    /// --create: make a new pool if POOL is missing or empty (never without it).
    var createPool = false
    var directIO = false
    /// -o no_writeback_cache turns the kernel's writeback cache off (-o writeback_cache: on, the default).
    var writebackCache = true
    var maximumThreads = 16
    /// -o uring=off: never move requests to FUSE over io_uring.
    var useRing = true
    /// -o options passed through to libfuse.
    var fuseOptions: [String] = []
    /// Used when the pool has to be created; the snapclone variant at every open.
    var poolOptions = PoolOptions()
    /// --nbd: where the same daemon serves NBD as well; nil for FUSE alone.
    var nbd: NBDArguments?

    /// -o ro: the kernel refuses writes, and the pool is opened read-only too.
    var isReadOnly: Bool { fuseOptions.contains("ro") }

    static let positionalMistake = "mount takes POOL and MOUNTPOINT"

    static func parse(_ words: [String]) throws(MountFailure) -> MountArguments {
        var positional: [String] = []
        var foreground = false
        var createPool = false
        var createOnlyFlags: [String] = []
        var options: [String] = []
        var poolOptions = PoolOptions()
        var nbd = NBDArguments.Parser()
        var index = 0
        func value(after flag: String) throws(MountFailure) -> String {
            index += 1
            guard index < words.count else { throw .usage("\(flag) needs a value") }
            return words[index]
        }
        while index < words.count {
            let word = words[index]
            switch word {
            case "-f", "--foreground":
                foreground = true
            case "--create":
                createPool = true
            case "-o":
                options += try value(after: word).split(separator: ",").map(String.init)
            case "--drives":
                createOnlyFlags.append(word)
                let text = try value(after: word)
                guard let count = Int(text), count >= 1, count <= 1024 else { throw .usage("--drives takes a number from 1 to 1024, not \(text)") }
                poolOptions.driveCount = count
            case "--drive-size":
                createOnlyFlags.append(word)
                let text = try value(after: word)
                guard let bytes = parseByteSize(text), bytes > 0 else { throw .usage("--drive-size takes a size such as 256M or 16G, not \(text)") }
                poolOptions.driveSizeBytes = bytes
            case "--nbd":
                try nbd.address(try value(after: word))
            case "--nbd-writable":
                nbd.writableSnapshots = true
            case "--raid":
                createOnlyFlags.append(word)
                let text = try value(after: word)
                guard let level = RAIDLevel(text: text) else { throw .usage("--raid takes 0, 1 or 5, not \(text)") }
                poolOptions.raid = level
            default:
                if word.hasPrefix("-") && word.count > 1 { throw .usage("unknown option \(word)") }
                positional.append(word)
            }
            index += 1
        }
        guard positional.count == 2 else { throw .usage(positionalMistake) }
        if let flag = createOnlyFlags.first, !createPool {
            throw .usage("\(flag) shapes a new pool and needs --create")
        }
        var arguments = MountArguments(poolPath: positional[0], mountpoint: positional[1], foreground: foreground,
                                       createPool: createPool, poolOptions: poolOptions, nbd: try nbd.finish())
        // NBD clients write the pool beside the kernel's page cache: a dirty page the cache
        // held could later be written back over an NBD client's newer bytes, and NBD reads
        // would miss writes the cache still holds. So with --nbd the cache is off unless
        // -o writeback_cache asks for it (docs/MOUNT.md says what that costs).
        if arguments.nbd != nil { arguments.writebackCache = false }
        for option in options where !option.isEmpty {
            if option == "direct_io" {
                arguments.directIO = true
            } else if option == "writeback_cache" || option == "no_writeback_cache" {
                arguments.writebackCache = option == "writeback_cache"
            } else if option.hasPrefix("max_threads=") {
                guard let count = Int(option.dropFirst("max_threads=".count)), count >= 1, count <= 1024 else {
                    throw .usage("max_threads takes a number from 1 to 1024")
                }
                arguments.maximumThreads = count
            } else if option.hasPrefix("blockcow=") {
                switch option.dropFirst("blockcow=".count) {
                case "on": arguments.poolOptions.blockCopyOnWrite = true
                case "off": arguments.poolOptions.blockCopyOnWrite = false
                default: throw .usage("blockcow takes on or off, not \(option.dropFirst("blockcow=".count))")
                }
            } else if option.hasPrefix("snapclone=") {
                let name = String(option.dropFirst("snapclone=".count))
                guard let variant = SnapcloneVariant(rawValue: name) else {
                    throw .usage("snapclone takes \(SnapcloneVariant.allCases.map(\.rawValue).joined(separator: " or ")), not \(name)")
                }
                arguments.poolOptions.snapcloneVariant = variant
            } else if option.hasPrefix("uring=") {
                switch option.dropFirst("uring=".count) {
                case "off": arguments.useRing = false
                case "auto": arguments.useRing = true
                default: throw .usage("uring takes off or auto, not \(option.dropFirst("uring=".count))")
                }
            } else if option.hasPrefix("max_read=") || option.hasPrefix("fsname=") || option.hasPrefix("subtype=") {
                throw .usage("-o \(option) is set by lunfs itself")
            } else {
                arguments.fuseOptions.append(option)
            }
        }
        if arguments.writebackCache && arguments.maximumThreads < 2 {
            throw .usage("max_threads=1 needs -o no_writeback_cache: a snapshot's flush of the kernel's dirty pages needs a second thread")
        }
        return arguments
    }
}

/// "4096", "256K", "256M", "16G", "1T" (binary multiples; a trailing "B" or "iB" is allowed).
func parseByteSize(_ text: String) -> UInt64? {
    var digits = Substring(text.uppercased())
    if digits.hasSuffix("IB") { digits = digits.dropLast(2) } else if digits.hasSuffix("B") { digits = digits.dropLast() }
    let shifts: [Character: UInt64] = ["K": 10, "M": 20, "G": 30, "T": 40, "P": 50]
    var shift: UInt64 = 0
    if let last = digits.last, let unitShift = shifts[last] {
        shift = unitShift
        digits = digits.dropLast()
    }
    guard let number = UInt64(digits) else { return nil }
    let (bytes, overflow) = number.multipliedReportingOverflow(by: 1 << shift)
    return overflow ? nil : bytes
}

/// What --nbd and --nbd-writable ask for; `lunfs mount` and `lunfs serve` share it.
struct NBDArguments {
    var address: NBDAddress
    var writableSnapshots: Bool

    var serverOptions: NBDServerOptions { NBDServerOptions(writableSnapshots: writableSnapshots) }

    /// Collects the two flags in any order.
    struct Parser {
        var addressText: String?
        var writableSnapshots = false

        mutating func address(_ text: String) throws(MountFailure) {
            guard NBDAddress(text) != nil else {
                throw .usage("--nbd takes a Unix socket path or HOST:PORT, not \(text)")
            }
            addressText = text
        }

        func finish() throws(MountFailure) -> NBDArguments? {
            guard let addressText, let address = NBDAddress(addressText) else {
                if writableSnapshots { throw .usage("--nbd-writable needs --nbd ADDRESS") }
                return nil
            }
            return NBDArguments(address: address, writableSnapshots: writableSnapshots)
        }
    }
}
