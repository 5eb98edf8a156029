// `lunfs check POOL [--scrub] [--repair]`: the offline consistency check. Plain `check` opens
// the pool read-only: it writes nothing, runs no recovery and works on a mounted pool (its last
// committed state). `--repair` opens it read-write, so the recovery steps of an open run
// (stale drives rebuilt, mirrors and parity resynchronised after an unclean shutdown, metadata
// rewritten on every mirror, the drive list put in order, and superblocks damaged on every
// copy rebuilt from the checkpoint and journal), and says what they changed. `--scrub` reads
// every block of user data and checks it against its checksum, naming each damaged place by
// drive and by disk and offset; with `--repair` too it rewrites each from a good copy.
// Exit 0 when clean, 1 when it finds inconsistencies, 2 when the pool cannot be opened at all.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LunEngine

func runCheck(_ args: [String]) -> Int32 {
    runVerb {
        let parsed = try ParsedArguments(args, valued: [])
        guard parsed.positionals.count == 1 else {
            printError("usage: lunfs check POOL [--scrub] [--repair]")
            return ExitCode.failure
        }
        let directory = parsed.positionals[0]
        let repair = parsed.flags.contains("repair")
        let pool: Pool
        if repair {
            do {
                pool = try Pool.open(directory: directory, repair: true)
            } catch LunError.busy(let why) {
                throw LunError.busy("\(why); unmount the pool before 'check --repair'")
            }
        } else {
            if isLocked(directory) { print("pool is mounted: checking its last committed state") }
            pool = try Pool.open(directory: directory, readOnly: true)
        }
        let scrub = parsed.flags.contains("scrub")
        let report = try PoolChecker(pool: pool, scrub: scrub, repair: repair).run()
        try pool.close()
        for n in report.notes { print("note: \(n)") }
        if repair {
            if pool.repairs.isEmpty { print("repaired: nothing needed repair") }
            for r in pool.repairs { print("repaired: \(r)") }
        }
        for p in report.problems { print("PROBLEM: \(p)") }
        print("checked \(report.disksChecked) disks, \(report.segmentsChecked) mapped segments, \(report.storesChecked) stores"
              + (report.scrub.map { ", scrubbed \($0.rsegsChecked) segments (\($0.blocksChecked) blocks of 4 KiB): \($0.damagedBlocks) damaged, "
                  + "\($0.repairedBlocks) repaired, \($0.unrecoverableBlocks) without a good copy" } ?? "")
              + ": \(report.problems.isEmpty ? "clean" : "\(report.problems.count) problems")"
              + (!repair && !report.problems.isEmpty ? " (read-only; 'lunfs check --repair' runs the recovery steps)" : ""))
        return report.problems.isEmpty ? ExitCode.ok : ExitCode.problemsFound
    }
}
