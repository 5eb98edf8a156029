// Big-endian encoding and decoding of NBD messages. `WireWriter` builds a message in memory so
// that it leaves in one send; `WireReader` takes fields off bytes already received and fails
// with a `MalformedMessage` instead of reading past them.

/// Option data shorter than its fields say, or longer than they use.
struct MalformedMessage: Error, CustomStringConvertible {
    var reason: String
    init(_ reason: String) { self.reason = reason }
    var description: String { reason }
}

/// Appends big-endian fields to a byte array.
struct WireWriter {
    private(set) var bytes: [UInt8] = []

    init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    mutating func u16(_ value: UInt16) { append(value) }
    mutating func u32(_ value: UInt32) { append(value) }
    mutating func u64(_ value: UInt64) { append(value) }
    mutating func raw<S: Sequence>(_ data: S) where S.Element == UInt8 { bytes.append(contentsOf: data) }
    mutating func string(_ text: String) { bytes.append(contentsOf: text.utf8) }
    mutating func zeros(_ count: Int) { bytes.append(contentsOf: repeatElement(0, count: count)) }

    private mutating func append<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }
}

/// Reads big-endian fields from a received message, front to back.
struct WireReader {
    private let bytes: [UInt8]
    private(set) var position = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { bytes.count - position }

    mutating func u16() throws(MalformedMessage) -> UInt16 { try take() }
    mutating func u32() throws(MalformedMessage) -> UInt32 { try take() }
    mutating func u64() throws(MalformedMessage) -> UInt64 { try take() }

    mutating func raw(_ count: Int) throws(MalformedMessage) -> [UInt8] {
        guard count >= 0, count <= remaining else { throw MalformedMessage("message cut short: wanted \(count) bytes, \(remaining) left") }
        defer { position += count }
        return Array(bytes[position..<position + count])
    }

    private mutating func take<T: FixedWidthInteger>() throws(MalformedMessage) -> T {
        let size = MemoryLayout<T>.size
        guard size <= remaining else { throw MalformedMessage("message cut short: wanted \(size) bytes, \(remaining) left") }
        var value: T = 0
        for byte in bytes[position..<position + size] { value = value << 8 | T(byte) }
        position += size
        return value
    }
}
