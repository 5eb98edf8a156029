// The second host's end of a coordinator session (CoordinatorProtocol.swift): it connects to
// the daemon that owns the snapshot (a Unix socket or HOST:PORT, as for NBD), sends the
// lunfs coordinate option for one export, and then asks its questions one at a time. Every
// failure is an `NBDError` whose message says what went wrong; a broken connection is EIO.
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import LunEngine

final class CoordinatorClient: Sendable {
    let stream: SocketStream
    let layout: ExternalLayout
    let readOnly: Bool
    /// One question at a time on the connection.
    private let exchange = Mutex<UInt64>(0)

    init(address: NBDAddress, export: String) throws(NBDError) {
        stream = SocketStream(descriptor: try Self.connect(address))
        do throws(ConnectionEnd) {
            let greeting = try stream.read(18)
            var r = WireReader(greeting)
            guard (try? r.u64()) == NBDMagic.greeting, (try? r.u64()) == NBDMagic.option else {
                throw ConnectionEnd("\(address) does not speak NBD")
            }
            var hello = WireWriter()
            hello.u32(HandshakeFlag.clientFixedNewstyle | HandshakeFlag.clientNoZeroes)
            hello.u64(NBDMagic.option)
            hello.u32(OptionCode.lunfsCoordinate)
            hello.u32(UInt32(export.utf8.count))
            hello.string(export)
            try stream.send(hello.bytes)
            var header = WireReader(try stream.read(20))
            guard (try? header.u64()) == NBDMagic.optionReply, (try? header.u32()) == OptionCode.lunfsCoordinate,
                  let type = try? header.u32(), let length = try? header.u32(), length <= 65536 else {
                throw ConnectionEnd("malformed reply to the coordinate option")
            }
            let payload = try stream.read(Int(length))
            guard type == OptionReply.ack else {
                throw ConnectionEnd("the coordinator refused \(export): \(String(decoding: payload, as: UTF8.self))")
            }
            var p = WireReader(payload)
            guard let size = try? p.u64(), let block = try? p.u32(), let flags = try? p.u32(), block >= 4096,
                  let path = try? p.raw(p.remaining) else {
                throw ConnectionEnd("malformed layout from the coordinator")
            }
            layout = ExternalLayout(filePath: String(decoding: path, as: UTF8.self), blockBytes: Int(block), sizeBytes: size)
            readOnly = flags & 1 != 0
        } catch {
            throw .init(NBDError.ioCode, error.reason)
        }
    }

    deinit {
        _ = try? stream.send(CoordinatorWire.request(.done, cookie: 0, from: 0, count: 0))
    }

    /// Which of `count` blocks from `first` the file holds.
    func validity(first: Int, count: Int) throws(NBDError) -> [Bool] {
        CoordinatorWire.unpack(try ask(.validity, from: UInt64(first), count: UInt32(count)), count: count)
    }

    /// The snapshot's bytes at `offset` (at most 32 MiB).
    func read(at offset: UInt64, count: Int) throws(NBDError) -> [UInt8] {
        try ask(.read, from: offset, count: UInt32(count))
    }

    /// Makes `count` blocks from `first` valid in the file, for this host to write them.
    func claim(first: Int, count: Int) throws(NBDError) {
        _ = try ask(.claim, from: UInt64(first), count: UInt32(count))
    }

    /// Tells the coordinator that this host wrote `count` bytes at `offset` of the file.
    func wrote(at offset: UInt64, count: Int) throws(NBDError) {
        _ = try ask(.wrote, from: offset, count: UInt32(count))
    }

    private func ask(_ question: CoordinatorWire.Question, from: UInt64, count: UInt32) throws(NBDError) -> [UInt8] {
        try exchange.withLock { (cookie) throws(NBDError) -> [UInt8] in
            cookie += 1
            do {
                try stream.send(CoordinatorWire.request(question, cookie: cookie, from: from, count: count))
                var header = WireReader(try stream.read(CoordinatorWire.replyHeaderBytes))
                guard (try? header.u32()) == CoordinatorWire.replyMagic, let error = try? header.u32(),
                      (try? header.u64()) == cookie, let length = try? header.u32(), length <= CoordinatorWire.maximumReadBytes else {
                    throw ConnectionEnd("malformed reply from the coordinator")
                }
                let payload = try stream.read(Int(length))
                if error != 0 { throw NBDErrorBox(NBDError(error, "the coordinator refused \(question) \(from)+\(count)")) }
                return payload
            } catch let box as NBDErrorBox {
                throw box.error
            } catch {
                throw NBDError(NBDError.ioCode, "coordinator connection: \(error)")
            }
        }
    }

    private static func connect(_ address: NBDAddress) throws(NBDError) -> Int32 {
        switch address {
        case .unixSocket(let path):
            var a = sockaddr_un()
            a.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &a.sun_path) { raw in
                let bytes = Array(path.utf8)
                raw.copyBytes(from: bytes)
                raw[bytes.count] = 0
            }
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            let ok = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } } == 0
            guard fd >= 0, ok else {
                let reason = String(cString: strerror(errno))
                if fd >= 0 { close(fd) }
                throw NBDError(NBDError.ioCode, "cannot reach the coordinator at \(path): \(reason)")
            }
            return fd
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = AI_NUMERICSERV
            var found: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(host, String(port), &hints, &found) == 0, let first = found else {
                throw NBDError(NBDError.ioCode, "cannot resolve \(host)")
            }
            defer { freeaddrinfo(found) }
            var entry: UnsafeMutablePointer<addrinfo>? = first
            while let e = entry {
                entry = e.pointee.ai_next
                let fd = socket(e.pointee.ai_family, e.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), e.pointee.ai_protocol)
                if fd < 0 { continue }
                if Glibc.connect(fd, e.pointee.ai_addr, e.pointee.ai_addrlen) == 0 { return fd }
                close(fd)
            }
            throw NBDError(NBDError.ioCode, "cannot reach the coordinator at \(host):\(port): \(String(cString: strerror(errno)))")
        }
    }
}

/// Carries a refusal through a closure whose thrown type is `ConnectionEnd`-free.
private struct NBDErrorBox: Error { let error: NBDError; init(_ e: NBDError) { error = e } }
