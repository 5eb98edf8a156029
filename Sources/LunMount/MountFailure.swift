// Why a mount or unmount command stops early: a message for the user and the exit status
// (2 for bad input such as wrong paths or arguments, 1 for everything that went wrong later).
struct MountFailure: Error, CustomStringConvertible {
    var exitStatus: Int32
    var message: String

    init(_ exitStatus: Int32, _ message: String) {
        assert(exitStatus != 0)
        self.exitStatus = exitStatus
        self.message = message
    }

    static func usage(_ message: String) -> MountFailure { MountFailure(2, message) }

    var description: String { message }
}
