// The coordinator's side of a second host's session (CoordinatorProtocol.swift): it answers
// each question with the engine's view of the snapshot on separate storage, one at a time. A
// malformed request ends the session; a refused one (a claim on a read-only export, a range
// past the snapshot) gets its errno and the session goes on.
import LunEngine

struct CoordinatorSession {
    let stream: SocketStream
    let pool: any CoordinatingPool
    let export: Export
    /// Tells the mounted tree that bytes of the export changed behind it (the second host's writes).
    let onChange: ChangeObserver?
    let log: @Sendable (String) -> Void

    func run() -> String {
        while true {
            let header: [UInt8]
            do { header = try stream.read(CoordinatorWire.requestBytes) } catch { return error.reason }
            var reader = WireReader(header)
            guard let magic = try? reader.u32(), magic == CoordinatorWire.requestMagic,
                  let type = try? reader.u16(), let question = CoordinatorWire.Question(rawValue: type),
                  let _ = try? reader.u16(), let cookie = try? reader.u64(), let from = try? reader.u64(),
                  let count = try? reader.u32() else {
                return "malformed coordinator request"
            }
            if question == .done { return "the second host detached" }
            var errorCode: UInt32 = 0
            var payload: [UInt8] = []
            do throws(NBDError) {
                payload = try answer(question, from: from, count: count)
            } catch {
                log("nbd: coordinator: \(question) \(from)+\(count) of \(export.name) refused: \(error.message)")
                errorCode = error.code
            }
            do {
                try stream.send(CoordinatorWire.replyHeader(error: errorCode, cookie: cookie, length: payload.count) + payload)
            } catch {
                return error.reason
            }
        }
    }

    private func answer(_ question: CoordinatorWire.Question, from: UInt64, count: UInt32) throws(NBDError) -> [UInt8] {
        switch question {
        case .validity, .claim:
            guard count <= CoordinatorWire.maximumBlocks, from <= UInt64(Int.max / 2) else { throw .invalid("\(count) blocks from \(from)") }
            let blocks = Int(from)..<Int(from) + Int(count)
            if question == .claim {
                guard !export.isReadOnly else { throw .notPermitted("\(export.name) is read-only (the coordinator serves snapshots writable with --nbd-writable)") }
                try engine { () throws(LunError) in try pool.claimExternalBlocks(export.disk, blocks: blocks) }
                return []
            }
            return CoordinatorWire.pack(try engine { () throws(LunError) -> [Bool] in try pool.externalValidity(export.disk, blocks: blocks) })
        case .read:
            guard count <= CoordinatorWire.maximumReadBytes, from.addingReportingOverflow(UInt64(count)).partialValue <= export.sizeBytes,
                  !from.addingReportingOverflow(UInt64(count)).overflow else {
                throw .invalid("read of \(count) bytes at \(from)")
            }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(count), alignment: 4096)
            defer { buffer.deallocate() }
            let got = try engine { () throws(LunError) -> Int in try pool.read(export.disk, at: from, into: buffer) }
            return Array(UnsafeRawBufferPointer(rebasing: buffer[0..<got]))
        case .wrote:
            guard !export.isReadOnly else { throw .notPermitted("\(export.name) is read-only") }
            onChange?(export.disk, from, UInt64(count))
            return []
        case .done:
            return []
        }
    }
}
