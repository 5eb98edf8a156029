// CRC-32C (Castagnoli): every superblock, checkpoint and journal record carries one, and so
// does every 4 KiB block of user data (Physical/BlockChecksums.swift), so a torn or rotten
// block is rejected instead of trusted. The arithmetic is in CLunSys (the SSE 4.2 instruction).
import CLunSys

public enum CRC32C {
    /// The checksum of `bytes`, continuing from `seed` (0 to start a new one).
    @inline(__always)
    public static func checksum(_ bytes: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress else { return seed }
        return lunsys_crc32c(seed, base, UInt64(bytes.count))
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0) }
    }
}
