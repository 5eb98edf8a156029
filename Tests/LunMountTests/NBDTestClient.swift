// A small NBD client that speaks the protocol byte by byte, for what Debian's clients cannot
// do: send a request the server must refuse (a WRITE to a read-only export) and read the
// error value back, keep a connection open across other clients' abuse, and send the
// fuzzer's random and truncated packets.
import Foundation
import XCTest

/// A TCP connection to 127.0.0.1:port with exact reads and writes.
final class RawConnection {
    let descriptor: Int32

    init(port: UInt16, receiveTimeoutSeconds: Int = 10) throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw FixtureError("socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            let reason = String(cString: strerror(errno))
            close(descriptor)
            throw FixtureError("connect to port \(port): \(reason)")
        }
        var limit = timeval(tv_sec: receiveTimeoutSeconds, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(descriptor) }

    func send(_ bytes: [UInt8]) throws {
        var done = 0
        while done < bytes.count {
            let sent = bytes[done...].withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else { throw FixtureError("send: \(String(cString: strerror(errno)))") }
            done += sent
        }
    }

    /// Exactly `count` bytes, or an error (end of stream, timeout).
    func receive(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let got = bytes[done...].withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            guard got > 0 else { throw FixtureError(got == 0 ? "server closed the connection" : "recv: \(String(cString: strerror(errno)))") }
            done += got
        }
        return bytes
    }

    /// Stops sending, then reads whatever the server still sends until it closes; returns
    /// false if the server kept the connection open past the receive timeout.
    func finishAndDrain() -> Bool {
        shutdown(descriptor, Int32(SHUT_WR))
        var scratch = [UInt8](repeating: 0, count: 65536)
        while true {
            let got = scratch.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if got == 0 { return true }
            if got < 0 { return errno == ECONNRESET }
        }
    }
}

/// Big-endian fields for hand-made messages.
struct MessageBytes {
    var bytes: [UInt8] = []
    mutating func u16(_ value: UInt16) { withUnsafeBytes(of: value.bigEndian) { bytes += $0 } }
    mutating func u32(_ value: UInt32) { withUnsafeBytes(of: value.bigEndian) { bytes += $0 } }
    mutating func u64(_ value: UInt64) { withUnsafeBytes(of: value.bigEndian) { bytes += $0 } }
    mutating func text(_ value: String) { bytes += Array(value.utf8) }
}

func bigEndian<T: FixedWidthInteger>(_ bytes: ArraySlice<UInt8>, as: T.Type) -> T {
    bytes.prefix(MemoryLayout<T>.size).reduce(0) { $0 << 8 | T($1) }
}

/// A client with simple replies (no structured replies negotiated), attached to one export.
final class SimpleNBDClient {
    static let optionMagic: UInt64 = 0x4948_4156_454f_5054
    let connection: RawConnection
    private(set) var sizeBytes: UInt64 = 0
    private(set) var transmissionFlags: UInt16 = 0
    private var nextCookie: UInt64 = 1

    /// Connects and sends NBD_OPT_GO for `export`; throws if the server refuses it.
    init(port: UInt16, export: String) throws {
        connection = try RawConnection(port: port)
        try Self.greet(connection)
        var option = MessageBytes()
        option.u64(Self.optionMagic)
        option.u32(7) // NBD_OPT_GO
        option.u32(UInt32(4 + export.utf8.count + 2))
        option.u32(UInt32(export.utf8.count))
        option.text(export)
        option.u16(0)
        try connection.send(option.bytes)
        while true {
            let header = try connection.receive(20)
            let type = bigEndian(header[12...], as: UInt32.self)
            let length = Int(bigEndian(header[16...], as: UInt32.self))
            let payload = try connection.receive(length)
            if type == 1 { break } // NBD_REP_ACK
            if type & 1 << 31 != 0 {
                throw FixtureError("server refused export \(export): reply 0x\(String(type, radix: 16)) \(String(decoding: payload, as: UTF8.self))")
            }
            if type == 3 && bigEndian(payload[...], as: UInt16.self) == 0 { // NBD_REP_INFO, NBD_INFO_EXPORT
                sizeBytes = bigEndian(payload[2...], as: UInt64.self)
                transmissionFlags = bigEndian(payload[10...], as: UInt16.self)
            }
        }
    }

    /// Reads the greeting and answers with both client flags.
    static func greet(_ connection: RawConnection) throws {
        let greeting = try connection.receive(18)
        guard bigEndian(greeting[...], as: UInt64.self) == 0x4e42_444d_4147_4943 else { throw FixtureError("no NBDMAGIC") }
        var flags = MessageBytes()
        flags.u32(3)
        try connection.send(flags.bytes)
    }

    static func request(command: UInt16, flags: UInt16 = 0, cookie: UInt64, offset: UInt64, length: UInt32) -> [UInt8] {
        var message = MessageBytes()
        message.u32(0x2560_9513)
        message.u16(flags)
        message.u16(command)
        message.u64(cookie)
        message.u64(offset)
        message.u32(length)
        return message.bytes
    }

    /// Sends one request and returns the reply's error value and, for a read, the data.
    func perform(command: UInt16, offset: UInt64, length: UInt32, payload: [UInt8] = [], readsData: Bool = false) throws -> (error: UInt32, data: [UInt8]) {
        let cookie = nextCookie
        nextCookie += 1
        try connection.send(Self.request(command: command, cookie: cookie, offset: offset, length: length) + payload)
        let reply = try connection.receive(16)
        guard bigEndian(reply[...], as: UInt32.self) == 0x6744_6698 else { throw FixtureError("not a simple reply") }
        guard bigEndian(reply[8...], as: UInt64.self) == cookie else { throw FixtureError("reply for another request") }
        let error = bigEndian(reply[4...], as: UInt32.self)
        let data = error == 0 && readsData ? try connection.receive(Int(length)) : []
        return (error, data)
    }

    func read(offset: UInt64, length: UInt32) throws -> [UInt8] {
        let reply = try perform(command: 0, offset: offset, length: length, readsData: true)
        guard reply.error == 0 else { throw FixtureError("READ failed with \(reply.error)") }
        return reply.data
    }

    func disconnect() throws {
        try connection.send(Self.request(command: 2, cookie: 0, offset: 0, length: 0))
    }
}

/// A TCP port on 127.0.0.1 nobody listens on right now.
func freeLocalPort() throws -> UInt16 {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
            bind(descriptor, pointer, length) == 0 && getsockname(descriptor, pointer, &length) == 0
        }
    }
    guard bound else { throw FixtureError("cannot find a free port: \(String(cString: strerror(errno)))") }
    return UInt16(bigEndian: address.sin_port)
}
