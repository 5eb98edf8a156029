// The kernel gives a FUSE mount 128 KiB of readahead, and the INIT reply can only lower it.
// Sequential reads of an image gain about a quarter with more, so once INIT has completed the
// daemon raises the mount's read_ahead_kb in sysfs (root only; a failure is logged, not fatal).
#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Readahead the daemon asks for on its mount: 4 MiB, four of the largest requests.
let mountReadaheadKiB = 4096

func raiseReadahead(of mountpoint: String, log: DaemonLog) {
    let thread = Thread {
        // stat of the mount point waits until the kernel's INIT has been answered.
        var info = stat()
        guard stat(mountpoint, &info) == 0 else { return }
        let dev = UInt64(info.st_dev)
        let major = ((dev >> 8) & 0xFFF) | ((dev >> 32) & ~UInt64(0xFFF))
        let minor = (dev & 0xFF) | ((dev >> 12) & ~UInt64(0xFF))
        let path = "/sys/class/bdi/\(major):\(minor)/read_ahead_kb"
        do {
            try "\(mountReadaheadKiB)\n".write(toFile: path, atomically: false, encoding: .utf8)
            log.write("session: readahead raised to \(mountReadaheadKiB) KiB (\(path))")
        } catch {
            log.write("session: cannot raise readahead through \(path): \(error.localizedDescription)")
        }
    }
    thread.name = "lunfs-readahead"
    thread.start()
}
