// Small pieces every verb of the command line uses: size parsing and printing, a minimal
// option scanner, and exit codes.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LunEngine

enum ExitCode {
    static let ok: Int32 = 0
    /// `check` found inconsistencies.
    static let problemsFound: Int32 = 1
    /// Bad usage, or the pool could not be opened.
    static let failure: Int32 = 2
}

/// Parses "16G", "256MiB", "4096", "1.5T" (binary units).
func parseSize(_ text: String) -> UInt64? {
    var t = text.uppercased()
    for suffix in ["IB", "B"] where t.hasSuffix(suffix) && t.count > suffix.count { t.removeLast(suffix.count); break }
    let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50]
    var multiplier: UInt64 = 1
    if let last = t.last, let m = units[last] { multiplier = m; t.removeLast() }
    guard let value = Double(t), value >= 0, value * Double(multiplier) < 1.8e19 else { return nil }
    return UInt64(value * Double(multiplier))
}

func formatSize(_ bytes: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    var v = Double(bytes)
    var i = 0
    while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
    return i == 0 ? "\(bytes) B" : String(format: "%.1f %@", v, units[i])
}

/// Splits arguments into positionals and `--name value` / `--flag` options.
struct ParsedArguments {
    var positionals: [String] = []
    var options: [String: [String]] = [:]
    var flags: Set<String> = []

    init(_ args: [String], valued: Set<String>) throws(LunError) {
        var i = 0
        while i < args.count {
            let a = args[i]
            if a.hasPrefix("--") {
                var name = String(a.dropFirst(2))
                var value: String?
                if let eq = name.firstIndex(of: "=") { value = String(name[name.index(after: eq)...]); name = String(name[..<eq]) }
                if valued.contains(name) {
                    if value == nil {
                        guard i + 1 < args.count else { throw .invalid("--\(name) needs a value") }
                        i += 1
                        value = args[i]
                    }
                    options[name, default: []].append(value!)
                } else {
                    guard value == nil else { throw .invalid("--\(name) takes no value") }
                    flags.insert(name)
                }
            } else {
                positionals.append(a)
            }
            i += 1
        }
    }
}

/// The positional arguments of a verb that takes exactly `count` of them and no flags; nil,
/// with `usage` printed, otherwise.
func exactPositionals(_ args: [String], _ count: Int, usage: String) throws(LunError) -> [String]? {
    let parsed = try ParsedArguments(args, valued: [])
    guard parsed.positionals.count == count, parsed.flags.isEmpty else {
        printError("usage: " + usage)
        return nil
    }
    return parsed.positionals
}

/// Runs a verb; an engine error becomes a message on stderr and exit code 2.
func runVerb(_ body: () throws -> Int32) -> Int32 {
    do {
        return try body()
    } catch let e as LunError {
        printError(e.description)
    } catch {
        printError("\(error)")
    }
    return ExitCode.failure
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data("lunfs: \(message)\n".utf8))
}

/// "[#######.............]  35%": a bar of `width` cells for `done` of `total`.
func progressBar(done: Int, total: Int, width: Int = 30) -> String {
    let fraction = total > 0 ? min(1, Double(done) / Double(total)) : 1
    let filled = Int(fraction * Double(width))
    return "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "]"
        + String(format: " %3d%%", Int(fraction * 100))
}
