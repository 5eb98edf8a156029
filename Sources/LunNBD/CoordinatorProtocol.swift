// The questions a second host asks the coordinator of a snapshot on separate storage (issue
// 16 item 3, seed 004 [0030]-[0035]). The coordinator is the daemon that owns V and the
// validity map; the second host reads and writes the snapshot's file itself wherever the map
// says the file holds the snapshot, and asks for the rest. The exchange rides on an NBD
// connection: the handshake's lunfs-only option `OptionCode.lunfsCoordinate` names the export
// and its ACK carries the layout:
//
//     u64 size, u32 block size, u32 flags (1: read-only), then the file's path (UTF-8)
//
// Then requests and replies, big-endian, one at a time:
//
//     request: u32 magic "LVSQ", u16 type, u16 zero, u64 cookie, u64 from, u32 count
//     reply:   u32 magic "LVSR", u32 error (an errno, 0 for success), u64 cookie,
//              u32 length, then length bytes
//
// | type | question | from, count | reply |
// |---|---|---|---|
// | 1 VALIDITY | which blocks does the file hold? | first block, blocks (at most 1 Mi) | one bit per block, LSB first |
// | 2 READ | the snapshot's bytes (V's where the file does not hold them) | byte offset, bytes (at most 32 MiB) | the bytes |
// | 3 CLAIM | I will write these blocks of the file myself | first block, blocks | nothing: each block is valid (copied in from V if it was not) and stays so |
// | 4 DONE | end of session | 0, 0 | none; the connection closes |
// | 5 WROTE | I wrote this range of the file | byte offset, bytes | nothing: the coordinator drops what its tree's page cache holds of the range |
import LunEngine

/// What the coordinator needs from its pool beyond NBD's calls.
public protocol CoordinatingPool: ExportablePool {
    func externalLayout(of id: DiskID) -> ExternalLayout?
    func externalValidity(_ id: DiskID, blocks: Range<Int>) throws(LunError) -> [Bool]
    func claimExternalBlocks(_ id: DiskID, blocks: Range<Int>) throws(LunError)
}

extension Pool: CoordinatingPool {}

enum CoordinatorWire {
    static let requestMagic: UInt32 = 0x4C56_5351
    static let replyMagic: UInt32 = 0x4C56_5352
    static let requestBytes = 28
    static let replyHeaderBytes = 20
    static let maximumBlocks: UInt32 = 1 << 20
    static let maximumReadBytes: UInt32 = 32 << 20

    enum Question: UInt16 {
        case validity = 1, read = 2, claim = 3, done = 4, wrote = 5
    }

    static func layout(_ layout: ExternalLayout, readOnly: Bool) -> [UInt8] {
        var w = WireWriter()
        w.u64(layout.sizeBytes)
        w.u32(UInt32(layout.blockBytes))
        w.u32(readOnly ? 1 : 0)
        w.string(layout.filePath)
        return w.bytes
    }

    static func request(_ question: Question, cookie: UInt64, from: UInt64, count: UInt32) -> [UInt8] {
        var w = WireWriter(capacity: requestBytes)
        w.u32(requestMagic); w.u16(question.rawValue); w.u16(0); w.u64(cookie); w.u64(from); w.u32(count)
        return w.bytes
    }

    static func replyHeader(error: UInt32, cookie: UInt64, length: Int) -> [UInt8] {
        var w = WireWriter(capacity: replyHeaderBytes)
        w.u32(replyMagic); w.u32(error); w.u64(cookie); w.u32(UInt32(length))
        return w.bytes
    }

    /// Bits, LSB first, eight to a byte.
    static func pack(_ bits: [Bool]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: (bits.count + 7) / 8)
        for (i, bit) in bits.enumerated() where bit { bytes[i / 8] |= 1 << UInt8(i % 8) }
        return bytes
    }

    static func unpack(_ bytes: [UInt8], count: Int) -> [Bool] {
        (0..<count).map { bytes[$0 / 8] & (1 << UInt8($0 % 8)) != 0 }
    }
}
