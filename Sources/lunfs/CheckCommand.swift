// `lunfs check POOL [--scrub]`: the offline consistency check. Exit 0 when clean,
// 1 when it finds inconsistencies, 2 when the pool cannot be opened at all.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LunEngine

func runCheck(_ args: [String]) -> Int32 {
    runVerb {
        let parsed = try ParsedArguments(args, valued: [])
        guard parsed.positionals.count == 1 else {
            printError("usage: lunfs check POOL [--scrub]")
            return ExitCode.failure
        }
        let directory = parsed.positionals[0]
        let pool: Pool
        do {
            pool = try Pool.open(directory: directory)
        } catch LunError.busy {
            print("pool is mounted: checking its last committed state read-only")
            pool = try Pool.open(directory: directory, readOnly: true)
        }
        let report = try PoolChecker(pool: pool, scrub: parsed.flags.contains("scrub")).run()
        try pool.close()
        for n in report.notes { print("note: \(n)") }
        for p in report.problems { print("PROBLEM: \(p)") }
        print("checked \(report.disksChecked) disks, \(report.segmentsChecked) mapped segments, \(report.storesChecked) stores"
              + (parsed.flags.contains("scrub") ? ", scrubbed \(report.rsegsScrubbed) redundant segments" : "")
              + ": \(report.problems.isEmpty ? "clean" : "\(report.problems.count) problems")")
        return report.problems.isEmpty ? ExitCode.ok : ExitCode.problemsFound
    }
}
