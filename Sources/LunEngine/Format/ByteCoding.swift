// Little-endian encoders for the metadata formats: fixed-width integers, LEB128 varints and
// length-prefixed strings. Decoding never traps on bad input; it throws `.corrupt`.

public struct ByteWriter {
    public private(set) var bytes: [UInt8] = []
    public init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func varint(_ v: UInt64) {
        var v = v
        while v >= 0x80 { bytes.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        bytes.append(UInt8(v))
    }
    public mutating func string(_ s: String) {
        let utf8 = Array(s.utf8)
        varint(UInt64(utf8.count))
        bytes.append(contentsOf: utf8)
    }
    public mutating func raw(_ b: [UInt8]) { bytes.append(contentsOf: b) }
    /// Overwrites 4 bytes at `at` (for checksums filled in after the body is known).
    public mutating func patchU32(_ v: UInt32, at: Int) {
        withUnsafeBytes(of: v.littleEndian) { for i in 0..<4 { bytes[at + i] = $0[i] } }
    }
    public mutating func pad(toMultipleOf n: Int) {
        let r = bytes.count % n
        if r != 0 { bytes.append(contentsOf: repeatElement(0, count: n - r)) }
    }
}

public struct ByteReader {
    public let bytes: [UInt8]
    public private(set) var position: Int

    public init(_ bytes: [UInt8], position: Int = 0) { self.bytes = bytes; self.position = position }

    public var remaining: Int { bytes.count - position }

    private mutating func take(_ n: Int) throws(LunError) -> ArraySlice<UInt8> {
        guard n >= 0, remaining >= n else { throw .corrupt("record truncated at byte \(position)") }
        defer { position += n }
        return bytes[position..<position + n]
    }
    private mutating func fixed<T: FixedWidthInteger>(_: T.Type) throws(LunError) -> T {
        let s = try take(MemoryLayout<T>.size)
        var v: T = 0
        for (i, b) in s.enumerated() { v |= T(b) << (8 * i) }
        return v
    }
    public mutating func u8() throws(LunError) -> UInt8 { try fixed(UInt8.self) }
    public mutating func u16() throws(LunError) -> UInt16 { try fixed(UInt16.self) }
    public mutating func u32() throws(LunError) -> UInt32 { try fixed(UInt32.self) }
    public mutating func u64() throws(LunError) -> UInt64 { try fixed(UInt64.self) }
    public mutating func varint() throws(LunError) -> UInt64 {
        var v: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let b = try u8()
            guard shift < 64 else { throw .corrupt("varint too long at byte \(position)") }
            v |= UInt64(b & 0x7F) << shift
            if b < 0x80 { return v }
            shift += 7
        }
    }
    public mutating func string() throws(LunError) -> String {
        let n = try varint()
        guard n <= 4096 else { throw .corrupt("string length \(n) at byte \(position)") }
        return String(decoding: try take(Int(n)), as: UTF8.self)
    }
    public mutating func raw(_ n: Int) throws(LunError) -> [UInt8] { Array(try take(n)) }
}
