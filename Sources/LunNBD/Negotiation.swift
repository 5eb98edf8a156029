// The handshake: the fixed newstyle greeting, then the options a client sends until it picks
// an export (NBD_OPT_GO or NBD_OPT_EXPORT_NAME) or gives up (NBD_OPT_ABORT). Bad option data
// gets an error reply and the client may try again; a broken stream, an unknown client flag,
// a wrong magic or an oversized option ends the connection.

/// What the handshake settled for the transmission phase.
struct NegotiatedSession {
    var export: Export
    var structuredReplies: Bool
    /// NBD_OPT_SET_META_CONTEXT selected `base:allocation` for this export.
    var allocationContext: Bool
    /// The client is a second host of a snapshot on separate storage: the connection carries
    /// the coordinator's questions (CoordinatorSession), not NBD transmission.
    var coordination = false
}

struct Negotiation {
    let stream: SocketStream
    let catalog: ExportCatalog

    private var structuredReplies = false
    private var noZeroes = false
    /// The export name the last NBD_OPT_SET_META_CONTEXT was for, when it chose base:allocation.
    private var allocationContextExport: String?

    init(stream: SocketStream, catalog: ExportCatalog) {
        self.stream = stream
        self.catalog = catalog
    }

    /// Runs the handshake; nil when the client aborted.
    mutating func run() throws(ConnectionEnd) -> NegotiatedSession? {
        var greeting = WireWriter()
        greeting.u64(NBDMagic.greeting)
        greeting.u64(NBDMagic.option)
        greeting.u16(HandshakeFlag.fixedNewstyle | HandshakeFlag.noZeroes)
        try stream.send(greeting.bytes)

        let clientFlags = try field(UInt32.self)
        guard clientFlags & ~HandshakeFlag.clientKnown == 0 else {
            throw ConnectionEnd("unknown client flags 0x\(String(clientFlags, radix: 16))")
        }
        noZeroes = clientFlags & HandshakeFlag.clientNoZeroes != 0

        for _ in 0..<NBDLimits.maximumOptionCount {
            let magic = try field(UInt64.self)
            guard magic == NBDMagic.option else { throw ConnectionEnd("option without IHAVEOPT (0x\(String(magic, radix: 16)))") }
            let option = try field(UInt32.self)
            let length = try field(UInt32.self)
            guard length <= NBDLimits.maximumOptionBytes else {
                throw ConnectionEnd("option \(option) carries \(length) bytes")
            }
            let data = try stream.read(Int(length))
            if let session = try handle(option: option, data: data) { return session }
            if option == OptionCode.abort { return nil }
        }
        throw ConnectionEnd("more than \(NBDLimits.maximumOptionCount) options")
    }

    /// Answers one option; returns the session when the option starts transmission.
    private mutating func handle(option: UInt32, data: [UInt8]) throws(ConnectionEnd) -> NegotiatedSession? {
        switch option {
        case OptionCode.exportName:
            let name = String(decoding: data, as: UTF8.self)
            // No error reply exists for this option: an unknown name ends the connection.
            guard let export = catalog.export(named: name) else { throw ConnectionEnd("NBD_OPT_EXPORT_NAME of unknown export \"\(name)\"") }
            var reply = WireWriter()
            reply.u64(export.sizeBytes)
            reply.u16(export.transmissionFlags)
            if !noZeroes { reply.zeros(124) }
            try stream.send(reply.bytes)
            return NegotiatedSession(export: export, structuredReplies: structuredReplies,
                                     allocationContext: allocationContextExport == name)
        case OptionCode.abort:
            // Clients often close without reading this ACK; a failed send is no failure here.
            try? reply(option, OptionReply.ack)
            return nil
        case OptionCode.list:
            guard data.isEmpty else { try reply(option, OptionReply.errorInvalid, "NBD_OPT_LIST takes no data"); return nil }
            for export in catalog.allExports() {
                var entry = WireWriter()
                entry.u32(UInt32(export.name.utf8.count))
                entry.string(export.name)
                entry.string(export.description)
                try reply(option, OptionReply.server, entry.bytes)
            }
            try reply(option, OptionReply.ack)
            return nil
        case OptionCode.info, OptionCode.go:
            return try answerInfo(option, data: data)
        case OptionCode.structuredReply:
            guard data.isEmpty else { try reply(option, OptionReply.errorInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data"); return nil }
            structuredReplies = true
            try reply(option, OptionReply.ack)
            return nil
        case OptionCode.listMetaContext, OptionCode.setMetaContext:
            try answerMetaContext(option, data: data)
            return nil
        case OptionCode.lunfsCoordinate:
            return try answerCoordinate(option, data: data)
        case OptionCode.startTLS:
            try reply(option, OptionReply.errorPolicy, "this server does not speak TLS")
            return nil
        default:
            try reply(option, OptionReply.errorUnsupported, "option \(option) is not supported")
            return nil
        }
    }

    /// NBD_OPT_INFO and NBD_OPT_GO: export name, then the information items asked for.
    private mutating func answerInfo(_ option: UInt32, data: [UInt8]) throws(ConnectionEnd) -> NegotiatedSession? {
        var reader = WireReader(data)
        let name: String
        var wanted: [UInt16] = []
        do throws(MalformedMessage) {
            let nameLength = try reader.u32()
            guard nameLength <= 4096 else { throw MalformedMessage("export name of \(nameLength) bytes") }
            name = String(decoding: try reader.raw(Int(nameLength)), as: UTF8.self)
            let count = try reader.u16()
            for _ in 0..<count { wanted.append(try reader.u16()) }
            guard reader.remaining == 0 else { throw MalformedMessage("\(reader.remaining) bytes after the information requests") }
        } catch {
            try reply(option, OptionReply.errorInvalid, error.reason)
            return nil
        }
        guard let export = catalog.export(named: name) else {
            try reply(option, OptionReply.errorUnknown, "no export named \"\(name)\" (exports are tree paths such as vm or vm/monday)")
            return nil
        }
        var item = WireWriter()
        item.u16(InfoItem.export)
        item.u64(export.sizeBytes)
        item.u16(export.transmissionFlags)
        try reply(option, OptionReply.info, item.bytes)
        for request in Set(wanted).sorted() {
            var answer = WireWriter()
            answer.u16(request)
            switch request {
            case InfoItem.name: answer.string(export.name)
            case InfoItem.description: answer.string(export.description)
            case InfoItem.blockSize:
                answer.u32(1)
                answer.u32(NBDLimits.preferredBlockBytes)
                answer.u32(UInt32(NBDLimits.maximumPayloadBytes))
            default: continue
            }
            try reply(option, OptionReply.info, answer.bytes)
        }
        try reply(option, OptionReply.ack)
        guard option == OptionCode.go else { return nil }
        return NegotiatedSession(export: export, structuredReplies: structuredReplies,
                                 allocationContext: allocationContextExport == name)
    }

    /// lunfs's coordinate option: the data is an export name, which must be a snapshot on
    /// separate storage; the ACK carries its layout (CoordinatorProtocol.swift) and the
    /// connection turns into a coordinator session.
    private mutating func answerCoordinate(_ option: UInt32, data: [UInt8]) throws(ConnectionEnd) -> NegotiatedSession? {
        let name = String(decoding: data, as: UTF8.self)
        guard let export = catalog.export(named: name) else {
            try reply(option, OptionReply.errorUnknown, "no export named \"\(name)\"")
            return nil
        }
        guard let pool = catalog.pool as? any CoordinatingPool, let layout = pool.externalLayout(of: export.disk) else {
            try reply(option, OptionReply.errorInvalid, "\(name) is no snapshot on separate storage")
            return nil
        }
        try reply(option, OptionReply.ack, CoordinatorWire.layout(layout, readOnly: export.isReadOnly))
        return NegotiatedSession(export: export, structuredReplies: false, allocationContext: false, coordination: true)
    }

    /// NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT; `base:allocation` is the only
    /// context there is.
    private mutating func answerMetaContext(_ option: UInt32, data: [UInt8]) throws(ConnectionEnd) {
        let isSet = option == OptionCode.setMetaContext
        if isSet && !structuredReplies {
            try reply(option, OptionReply.errorInvalid, "meta contexts need structured replies first")
            return
        }
        var reader = WireReader(data)
        let name: String
        var queries: [String] = []
        do throws(MalformedMessage) {
            let nameLength = try reader.u32()
            guard nameLength <= 4096 else { throw MalformedMessage("export name of \(nameLength) bytes") }
            name = String(decoding: try reader.raw(Int(nameLength)), as: UTF8.self)
            let count = try reader.u32()
            guard count <= 1024 else { throw MalformedMessage("\(count) queries") }
            for _ in 0..<count {
                let length = try reader.u32()
                guard length <= 4096 else { throw MalformedMessage("query of \(length) bytes") }
                queries.append(String(decoding: try reader.raw(Int(length)), as: UTF8.self))
            }
            guard reader.remaining == 0 else { throw MalformedMessage("\(reader.remaining) bytes after the queries") }
        } catch {
            try reply(option, OptionReply.errorInvalid, error.reason)
            return
        }
        guard catalog.export(named: name) != nil else {
            try reply(option, OptionReply.errorUnknown, "no export named \"\(name)\"")
            return
        }
        // An empty list asks for every context (LIST) or chooses none (SET).
        let matches = isSet
            ? queries.contains(AllocationContext.name)
            : queries.isEmpty || queries.contains { $0 == AllocationContext.name || $0 == "base:" }
        if isSet { allocationContextExport = matches ? name : nil }
        if matches {
            var context = WireWriter()
            context.u32(AllocationContext.id)
            context.string(AllocationContext.name)
            try reply(option, OptionReply.metaContext, context.bytes)
        }
        try reply(option, OptionReply.ack)
    }

    private func reply(_ option: UInt32, _ type: UInt32, _ payload: [UInt8] = []) throws(ConnectionEnd) {
        var message = WireWriter(capacity: 20 + payload.count)
        message.u64(NBDMagic.optionReply)
        message.u32(option)
        message.u32(type)
        message.u32(UInt32(payload.count))
        message.raw(payload)
        try stream.send(message.bytes)
    }

    private func reply(_ option: UInt32, _ type: UInt32, _ text: String) throws(ConnectionEnd) {
        try reply(option, type, Array(text.utf8))
    }

    private func field<T: FixedWidthInteger>(_: T.Type) throws(ConnectionEnd) -> T {
        let bytes = try stream.read(MemoryLayout<T>.size)
        return bytes.reduce(0) { $0 << 8 | T($1) }
    }
}
