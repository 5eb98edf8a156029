// `lunfs --version`: the release this source tree calls itself and the git commit the binary
// was built from. The commit is compiled in only when the build was given one (scripts/install
// does); a plain `swift build` says so rather than guess from whatever checkout is nearby.
#if canImport(Glibc)
import Glibc
#endif
import CLunSys

/// The release of this source tree; raised by hand when a release is cut.
let lunfsVersion = "0.1.0"

func runVersion() -> Int32 {
    let commit = String(cString: lunsys_build_commit())
    if commit == "unknown" {
        print("lunfs \(lunfsVersion) (commit unknown: built without scripts/install)")
    } else {
        print("lunfs \(lunfsVersion) (commit \(commit))")
    }
    return 0
}
