// A pool on real drive files, for the tests that follow FileDevice's paths through the engine
// (FileDeviceTransferTests, FileDeviceMappedTailTests): the drive files are `prefix0`,
// `prefix1`, … and every open goes through new descriptors.
@testable import LunEngine

struct FileDrivePool {
    let prefix: String
    let count: Int

    /// Creates the drive files of `size` bytes, formats them for `raid` and opens the pool.
    func create(size: UInt64, raid: RAIDLevel) throws -> (Pool, [FileDevice]) {
        let devices = try (0..<count).map { try FileDevice.createFile(path: "\(prefix)\($0)", sizeBytes: size) }
        try Pool.format(devices: devices, raid: raid)
        return (try Pool.open(devices: devices, sizes: devices.map(\.sizeBytes)), devices)
    }

    /// Opens the pool on the drive files again (the caller closed it).
    func reopen() throws -> (Pool, [FileDevice]) {
        let devices = try (0..<count).map { try FileDevice(path: "\(prefix)\($0)") }
        return (try Pool.open(devices: devices, sizes: devices.map(\.sizeBytes)), devices)
    }
}
