// XOR of byte ranges: RAID 5 parity and reconstruction of a missing column.

@inline(__always)
func xorBytes(into dst: UnsafeMutableRawPointer, from src: UnsafeRawPointer, count: Int) {
    var i = 0
    while i + 32 <= count {
        let a = dst.loadUnaligned(fromByteOffset: i, as: SIMD4<UInt64>.self)
        let b = src.loadUnaligned(fromByteOffset: i, as: SIMD4<UInt64>.self)
        dst.storeBytes(of: a ^ b, toByteOffset: i, as: SIMD4<UInt64>.self)
        i += 32
    }
    while i < count {
        let a = dst.load(fromByteOffset: i, as: UInt8.self)
        let b = src.load(fromByteOffset: i, as: UInt8.self)
        dst.storeBytes(of: a ^ b, toByteOffset: i, as: UInt8.self)
        i += 1
    }
}

/// A page-aligned scratch buffer, freed by the caller.
func scratchBuffer(_ count: Int) -> UnsafeMutableRawBufferPointer {
    UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 4096)
}
