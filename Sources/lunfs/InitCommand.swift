// `lunfs init POOL`: creates a pool directory with its drives and an empty pool on them.
// A drive given with --drive that belongs to a pool is refused unless --force, and always
// while that pool is open; a failed init removes what it created.
#if canImport(Glibc)
import Glibc
#endif
import LunEngine

func runInit(_ args: [String]) -> Int32 {
    runVerb {
        let parsed = try ParsedArguments(args, valued: ["drives", "drive-size", "raid", "drive", "pseg-size"])
        guard parsed.positionals.count == 1 else {
            printError("usage: lunfs init POOL [--drives N] [--drive-size SIZE] [--raid 0|1|5] [--drive PATH ...] [--force]")
            return ExitCode.failure
        }
        var options = PoolOptions()
        if let n = parsed.options["drives"]?.last {
            guard let v = Int(n), v >= 1 else { throw LunError.invalid("--drives \(n): expected a positive number") }
            options.driveCount = v
        }
        if let s = parsed.options["drive-size"]?.last {
            guard let v = parseSize(s), v > 0 else { throw LunError.invalid("--drive-size \(s): expected a size like 16G") }
            options.driveSizeBytes = v
        }
        if let s = parsed.options["pseg-size"]?.last {
            guard let v = parseSize(s) else { throw LunError.invalid("--pseg-size \(s)") }
            options.psegSizeBytes = v
        }
        if let r = parsed.options["raid"]?.last {
            guard let level = RAIDLevel(text: r) else { throw LunError.invalid("--raid \(r): expected 0, 1 or 5") }
            options.raid = level
        }
        options.drivePaths = parsed.options["drive"] ?? []
        options.force = parsed.flags.contains("force")
        let pool = try Pool.create(directory: parsed.positionals[0], options: options)
        let usage = pool.usage()
        try pool.close()
        print("created pool \(parsed.positionals[0]): \(usage.driveCount) drives, \(formatSize(usage.capacityBytes)) of segments, default \(usage.defaultRAID), \(formatSize(usage.freeBytes)) free")
        return ExitCode.ok
    }
}
