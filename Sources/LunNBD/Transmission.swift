// The transmission phase of one connection: a reader takes requests off the socket (with a
// WRITE's payload, so the stream stays in step) and hands each to a worker; at most
// `maximumInFlight` requests are between the socket and their reply at once, after which the
// reader stops reading and TCP holds the client back. Every request maps onto one engine
// call of the kind the mounted tree makes: READ `Pool.read`, WRITE `Pool.write`, TRIM and
// WRITE_ZEROES `Pool.discard`, BLOCK_STATUS `Pool.seek`, FLUSH and FUA `Pool.commit`.
import Dispatch
import LunEngine

/// Told of every range an NBD client changed (after the engine holds the new bytes), so that
/// the mounted tree can drop what the kernel cached of it.
public typealias ChangeObserver = @Sendable (_ disk: DiskID, _ offset: UInt64, _ length: UInt64) -> Void

/// One request as it came off the wire.
struct Request: Sendable {
    var flags: UInt16
    var command: UInt16
    var cookie: UInt64
    var offset: UInt64
    var length: UInt32

    static let headerBytes = 28

    /// The magic and the request in a 28-byte header.
    static func decode(_ header: [UInt8]) -> (magic: UInt32, request: Request) {
        precondition(header.count == headerBytes)
        func field<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T {
            header[at..<at + MemoryLayout<T>.size].reduce(0) { $0 << 8 | T($1) }
        }
        return (field(0, UInt32.self), Request(flags: field(4, UInt16.self), command: field(6, UInt16.self), cookie: field(8, UInt64.self),
                                             offset: field(16, UInt64.self), length: field(24, UInt32.self)))
    }
}

/// A WRITE's payload on its way from the reader to a worker; page-aligned, so the engine can
/// send it to the drives without copying.
struct Payload: @unchecked Sendable {
    let bytes: UnsafeMutableRawBufferPointer

    init(count: Int) {
        bytes = .allocate(byteCount: max(count, 1), alignment: 4096)
    }

    func release() { bytes.deallocate() }
}

final class Transmission: Sendable {
    let stream: SocketStream
    let session: NegotiatedSession
    let pool: any ExportablePool
    let maximumInFlight: Int
    let onChange: ChangeObserver?
    let log: @Sendable (String) -> Void

    init(stream: SocketStream, session: NegotiatedSession, pool: any ExportablePool, maximumInFlight: Int,
         onChange: ChangeObserver?, log: @escaping @Sendable (String) -> Void) {
        precondition(maximumInFlight >= 1)
        self.stream = stream
        self.session = session
        self.pool = pool
        self.maximumInFlight = maximumInFlight
        self.onChange = onChange
        self.log = log
    }

    private var export: Export { session.export }

    /// What the reader made of one request.
    private enum Received {
        case disconnect
        case work(Request, Payload?)
        /// Answered with an error; the connection goes on.
        case refused(Request, NBDError)
        /// Answered with an error, then the connection ends (the stream cannot be trusted).
        case refusedFinally(Request, NBDError)
    }

    /// Serves requests until the client disconnects or breaks the protocol; returns why it
    /// ended. Every request read has been answered (or the socket failed) when it returns.
    func run() -> String {
        let slots = DispatchSemaphore(value: maximumInFlight)
        let inFlight = DispatchGroup()
        defer { inFlight.wait() }
        while true {
            slots.wait()
            let received: Received
            do {
                received = try receive()
            } catch {
                slots.signal()
                return error.reason
            }
            switch received {
            case .disconnect:
                slots.signal()
                return "client disconnected (NBD_CMD_DISC)"
            case .refused(let request, let failure):
                slots.signal()
                log("nbd: \(export.name): \(describe(request)) refused: \(failure)")
                guard (try? replyError(request, failure)) != nil else { return "send failed" }
            case .refusedFinally(let request, let failure):
                slots.signal()
                try? replyError(request, failure)
                return "\(describe(request)) refused, connection closed: \(failure.message)"
            case .work(let request, let payload):
                inFlight.enter()
                DispatchQueue.global().async { [self] in
                    defer {
                        payload?.release()
                        slots.signal()
                        inFlight.leave()
                    }
                    perform(request, payload)
                }
            }
        }
    }

    // MARK: Reading and checking requests

    private func receive() throws(ConnectionEnd) -> Received {
        let header = try stream.read(Request.headerBytes)
        let (magic, request) = Request.decode(header)
        guard magic == NBDMagic.request else { throw ConnectionEnd("request without its magic (0x\(String(magic, radix: 16)))") }
        if request.command == CommandCode.disconnect { return .disconnect }
        var payload: Payload?
        if request.command == CommandCode.write {
            guard Int(request.length) <= NBDLimits.maximumPayloadBytes else {
                return .refusedFinally(request, .invalid("a write of \(request.length) bytes is over the \(NBDLimits.maximumPayloadBytes)-byte limit"))
            }
            let bytes = Payload(count: Int(request.length))
            do {
                try stream.read(into: UnsafeMutableRawBufferPointer(rebasing: bytes.bytes[..<Int(request.length)]))
            } catch {
                bytes.release()
                throw error
            }
            payload = bytes
        }
        if let failure = check(request) {
            payload?.release()
            return .refused(request, failure)
        }
        return .work(request, payload)
    }

    /// Why a request cannot be carried out, or nil: flags that do not belong to the command,
    /// a range past the export, a change to a read-only export, a length over the limit.
    private func check(_ request: Request) -> NBDError? {
        let allowedFlags: UInt16
        var changes = false
        var maximumLength = UInt64(UInt32.max)
        switch request.command {
        case CommandCode.read:
            allowedFlags = CommandFlag.dontFragment
            maximumLength = UInt64(NBDLimits.maximumPayloadBytes)
        case CommandCode.write:
            allowedFlags = CommandFlag.forceUnitAccess
            changes = true
        case CommandCode.flush:
            return request.flags == 0 ? nil : .invalid("flags 0x\(String(request.flags, radix: 16)) on FLUSH")
        case CommandCode.trim:
            allowedFlags = CommandFlag.forceUnitAccess
            changes = true
        case CommandCode.writeZeroes:
            allowedFlags = CommandFlag.forceUnitAccess | CommandFlag.noHole
            changes = true
        case CommandCode.cache:
            allowedFlags = 0
        case CommandCode.blockStatus:
            allowedFlags = CommandFlag.requestOne
            guard session.structuredReplies && session.allocationContext else {
                return .invalid("BLOCK_STATUS without the base:allocation meta context")
            }
            guard request.length > 0 else { return .invalid("BLOCK_STATUS of no bytes") }
        default:
            return .invalid("unknown command \(request.command)")
        }
        guard request.flags & ~allowedFlags == 0 else {
            return .invalid("flags 0x\(String(request.flags, radix: 16)) on command \(request.command)")
        }
        guard UInt64(request.length) <= maximumLength else {
            return .invalid("\(request.length) bytes is over the \(maximumLength)-byte limit")
        }
        if changes && export.isReadOnly {
            return .notPermitted("export \(export.name) is read-only")
        }
        let (end, overflow) = request.offset.addingReportingOverflow(UInt64(request.length))
        guard !overflow, end <= export.sizeBytes else {
            let text = "range \(request.offset)+\(request.length) is past the end of \(export.name) (\(export.sizeBytes) bytes)"
            return changes ? .noSpace(text) : .invalid(text)
        }
        return nil
    }

    // MARK: Carrying requests out

    private func perform(_ request: Request, _ payload: Payload?) {
        let id = export.disk
        do throws(NBDError) {
            switch request.command {
            case CommandCode.read:
                try performRead(request)
                return
            case CommandCode.blockStatus:
                try performBlockStatus(request)
                return
            case CommandCode.write:
                let bytes = UnsafeRawBufferPointer(rebasing: payload!.bytes[..<Int(request.length)])
                try engine { () throws(LunError) in try pool.write(id, at: request.offset, from: bytes) }
                try changed(request)
            case CommandCode.trim:
                try engine { () throws(LunError) in try pool.discard(id, at: request.offset, length: UInt64(request.length)) }
                try changed(request)
            case CommandCode.writeZeroes:
                if request.flags & CommandFlag.noHole != 0 {
                    try writeZeros(request)
                } else {
                    try engine { () throws(LunError) in try pool.discard(id, at: request.offset, length: UInt64(request.length)) }
                }
                try changed(request)
            case CommandCode.flush:
                try engine { () throws(LunError) in try pool.commit() }
            case CommandCode.cache:
                // The engine keeps no cache of its own to fill; the range was checked.
                break
            default:
                preconditionFailure("command \(request.command) passed the checks")
            }
            try? replySimple(request, error: 0)
        } catch {
            log("nbd: \(export.name): \(describe(request)) failed: \(error)")
            try? replyError(request, error)
        }
    }

    /// After a change: FUA makes it durable before the reply, and the observer hears of it.
    private func changed(_ request: Request) throws(NBDError) {
        if request.flags & CommandFlag.forceUnitAccess != 0 {
            try engine { () throws(LunError) in try pool.commit() }
        }
        onChange?(export.disk, request.offset, UInt64(request.length))
    }

    private func writeZeros(_ request: Request) throws(NBDError) {
        let pieceBytes = min(Int(request.length), 1 << 20)
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: max(pieceBytes, 1), alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var done = 0
        while done < Int(request.length) {
            let count = min(pieceBytes, Int(request.length) - done)
            let piece = UnsafeRawBufferPointer(rebasing: zeros[..<count])
            try engine { () throws(LunError) in try pool.write(export.disk, at: request.offset + UInt64(done), from: piece) }
            done += count
        }
    }

    private func performRead(_ request: Request) throws(NBDError) {
        let count = Int(request.length)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 4096)
        defer { buffer.deallocate() }
        let target = UnsafeMutableRawBufferPointer(rebasing: buffer[..<count])
        let got = try engine { () throws(LunError) in try pool.read(export.disk, at: request.offset, into: target) }
        assert(got <= count, "the engine read more than asked")
        // Short only if the disk shrank under the export: past its end reads zeros.
        if got < count { UnsafeMutableRawBufferPointer(rebasing: target[got...]).initializeMemory(as: UInt8.self, repeating: 0) }
        let data = UnsafeRawBufferPointer(target)
        if session.structuredReplies {
            var header = WireWriter(capacity: 28)
            if count == 0 {
                chunkHeader(&header, request, type: ChunkType.none, length: 0)
            } else {
                chunkHeader(&header, request, type: ChunkType.offsetData, length: UInt32(8 + count))
                header.u64(request.offset)
            }
            try? send(header.bytes, data)
        } else {
            var header = WireWriter(capacity: 16)
            simpleHeader(&header, request, error: 0)
            try? send(header.bytes, data)
        }
    }

    /// base:allocation extents from the engine's map: a hole (also reads as zeros) where no
    /// segment is mapped, data elsewhere; at segment granularity, like SEEK_DATA on the tree.
    private func performBlockStatus(_ request: Request) throws(NBDError) {
        let id = export.disk
        let end = request.offset + UInt64(request.length)
        var extents: [(length: UInt32, flags: UInt32)] = []
        var position = request.offset
        while position < end && extents.count < NBDLimits.maximumExtents {
            let nextData = try engine { () throws(LunError) in try pool.seek(id, from: position, data: true) } ?? end
            var to: UInt64
            var flags: UInt32 = 0
            if nextData > position {
                to = min(nextData, end)
                flags = AllocationContext.hole | AllocationContext.zero
            } else {
                let nextHole = try engine { () throws(LunError) in try pool.seek(id, from: position, data: false) } ?? end
                to = min(nextHole, end)
            }
            if to <= position {
                // The map changed between the two questions: say "data" for the rest.
                to = end
                flags = 0
            }
            if let last = extents.last, last.flags == flags {
                extents[extents.count - 1].length += UInt32(to - position)
            } else {
                extents.append((UInt32(to - position), flags))
            }
            position = to
            if request.flags & CommandFlag.requestOne != 0 { break }
        }
        var message = WireWriter(capacity: 24 + 8 * extents.count)
        chunkHeader(&message, request, type: ChunkType.blockStatus, length: UInt32(4 + 8 * extents.count), done: true)
        message.u32(AllocationContext.id)
        for extent in extents {
            message.u32(extent.length)
            message.u32(extent.flags)
        }
        try? stream.send(message.bytes)
    }

    // MARK: Replies

    private func replySimple(_ request: Request, error: UInt32) throws(ConnectionEnd) {
        var header = WireWriter(capacity: 16)
        simpleHeader(&header, request, error: error)
        try stream.send(header.bytes)
    }

    private func replyError(_ request: Request, _ failure: NBDError) throws(ConnectionEnd) {
        guard session.structuredReplies else {
            try replySimple(request, error: failure.code)
            return
        }
        let message = Array(failure.message.utf8.prefix(4096))
        var chunk = WireWriter(capacity: 26 + message.count)
        chunkHeader(&chunk, request, type: ChunkType.error, length: UInt32(6 + message.count))
        chunk.u32(failure.code)
        chunk.u16(UInt16(message.count))
        chunk.raw(message)
        try stream.send(chunk.bytes)
    }

    private func simpleHeader(_ header: inout WireWriter, _ request: Request, error: UInt32) {
        header.u32(NBDMagic.simpleReply)
        header.u32(error)
        header.u64(request.cookie)
    }

    /// The header of a structured reply chunk; every reply here is a single chunk (DONE).
    private func chunkHeader(_ header: inout WireWriter, _ request: Request, type: UInt16, length: UInt32, done: Bool = true) {
        header.u32(NBDMagic.structuredReply)
        header.u16(done ? ChunkType.flagDone : 0)
        header.u16(type)
        header.u64(request.cookie)
        header.u32(length)
    }

    private func send(_ header: [UInt8], _ data: UnsafeRawBufferPointer) throws(ConnectionEnd) {
        try header.withUnsafeBytes { head in Result { () throws(ConnectionEnd) in try stream.send([head, data]) } }.get()
    }

    private func describe(_ request: Request) -> String {
        let names: [UInt16: String] = [0: "READ", 1: "WRITE", 2: "DISC", 3: "FLUSH", 4: "TRIM", 5: "CACHE", 6: "WRITE_ZEROES", 7: "BLOCK_STATUS"]
        return "\(names[request.command] ?? "command \(request.command)") \(request.offset)+\(request.length)"
    }
}
