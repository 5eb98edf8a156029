// The numbers of the NBD protocol (magics, options, replies, commands, flags, errors) in one
// place, named as the protocol document names them, so that the handshake, the transmission
// loop and the tests read the same table.

/// Magic numbers that frame every message.
enum NBDMagic {
    /// "NBDMAGIC": the first 8 bytes the server sends.
    static let greeting: UInt64 = 0x4e42_444d_4147_4943
    /// "IHAVEOPT": after the greeting, and before every option the client sends.
    static let option: UInt64 = 0x4948_4156_454f_5054
    /// Before every reply to an option.
    static let optionReply: UInt64 = 0x0003_e889_0455_65a9
    /// Before every request in the transmission phase.
    static let request: UInt32 = 0x2560_9513
    static let simpleReply: UInt32 = 0x6744_6698
    static let structuredReply: UInt32 = 0x668e_33ef
}

/// Handshake flags (server, 16 bits) and client flags (32 bits).
enum HandshakeFlag {
    static let fixedNewstyle: UInt16 = 1 << 0
    static let noZeroes: UInt16 = 1 << 1
    static let clientFixedNewstyle: UInt32 = 1 << 0
    static let clientNoZeroes: UInt32 = 1 << 1
    static let clientKnown: UInt32 = clientFixedNewstyle | clientNoZeroes
}

/// Options a client sends during the handshake.
enum OptionCode {
    static let exportName: UInt32 = 1
    static let abort: UInt32 = 2
    static let list: UInt32 = 3
    static let startTLS: UInt32 = 5
    static let info: UInt32 = 6
    static let go: UInt32 = 7
    static let structuredReply: UInt32 = 8
    static let listMetaContext: UInt32 = 9
    static let setMetaContext: UInt32 = 10
    /// lunfs's own: the connection leaves NBD and asks the coordinator's questions about a
    /// snapshot on separate storage (CoordinatorProtocol.swift). Other clients never send it.
    static let lunfsCoordinate: UInt32 = 0x4C55_4E01
}

/// Reply types to options; errors have the top bit set.
enum OptionReply {
    static let ack: UInt32 = 1
    static let server: UInt32 = 2
    static let info: UInt32 = 3
    static let metaContext: UInt32 = 4
    static let errorUnsupported: UInt32 = 1 << 31 | 1
    static let errorPolicy: UInt32 = 1 << 31 | 2
    static let errorInvalid: UInt32 = 1 << 31 | 3
    static let errorUnknown: UInt32 = 1 << 31 | 6
}

/// Information items of NBD_OPT_INFO and NBD_OPT_GO.
enum InfoItem {
    static let export: UInt16 = 0
    static let name: UInt16 = 1
    static let description: UInt16 = 2
    static let blockSize: UInt16 = 3
}

/// Transmission flags (16 bits) sent with an export.
enum TransmissionFlag {
    static let hasFlags: UInt16 = 1 << 0
    static let readOnly: UInt16 = 1 << 1
    static let sendFlush: UInt16 = 1 << 2
    static let sendFUA: UInt16 = 1 << 3
    static let sendTrim: UInt16 = 1 << 5
    static let sendWriteZeroes: UInt16 = 1 << 6
    static let canMultiConnection: UInt16 = 1 << 8
    static let sendCache: UInt16 = 1 << 10
}

/// Commands of the transmission phase.
enum CommandCode {
    static let read: UInt16 = 0
    static let write: UInt16 = 1
    static let disconnect: UInt16 = 2
    static let flush: UInt16 = 3
    static let trim: UInt16 = 4
    static let cache: UInt16 = 5
    static let writeZeroes: UInt16 = 6
    static let blockStatus: UInt16 = 7
}

/// Command flags (16 bits) of a request.
enum CommandFlag {
    static let forceUnitAccess: UInt16 = 1 << 0
    static let noHole: UInt16 = 1 << 1
    static let dontFragment: UInt16 = 1 << 2
    static let requestOne: UInt16 = 1 << 3
    /// Not offered (no SEND_FAST_ZERO), so refused with EINVAL like any flag out of place.
    static let fastZero: UInt16 = 1 << 4
}

/// Structured reply chunk types and flags.
enum ChunkType {
    static let none: UInt16 = 0
    static let offsetData: UInt16 = 1
    static let blockStatus: UInt16 = 5
    static let error: UInt16 = 1 << 15 | 1
    static let flagDone: UInt16 = 1 << 0
}

/// The `base:allocation` meta context: its name, the id this server gives it, its flags.
enum AllocationContext {
    static let name = "base:allocation"
    static let id: UInt32 = 1
    static let hole: UInt32 = 1 << 0
    static let zero: UInt32 = 1 << 1
}

/// Bounds this server keeps to: what one request may carry, what one option may carry.
public enum NBDLimits {
    /// The largest READ or WRITE payload (advertised as the maximum block size).
    public static let maximumPayloadBytes = 32 << 20
    /// The preferred block size advertised to clients.
    static let preferredBlockBytes: UInt32 = 4096
    /// Option data larger than this closes the connection (names are at most 4096 bytes).
    static let maximumOptionBytes = 64 << 10
    /// Options one connection may send before it is taken for a denial of service.
    static let maximumOptionCount = 1024
    /// Descriptors in one BLOCK_STATUS reply.
    static let maximumExtents = 4096
}
