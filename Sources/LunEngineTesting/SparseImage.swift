// The bytes of an in-memory drive, kept as 64 KiB pages in a dictionary so that a test can
// have many drives of many GiB and pay only for the pages it writes; absent pages read as zeros.

struct SparseImage: Sendable {
    static let pageSizeBytes = 64 * 1024

    /// Page index (offset / pageSizeBytes) -> exactly pageSizeBytes bytes.
    private var pages: [UInt64: [UInt8]] = [:]

    /// Memory held by written pages.
    var residentBytes: Int { pages.count * Self.pageSizeBytes }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) {
        forEachPiece(offset: offset, length: UInt64(buffer.count)) { page, inPage, done, count in
            let destination = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + count)])
            if let bytes = pages[page] {
                bytes.withUnsafeBytes { source in
                    destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[inPage..<(inPage + count)]))
                }
            } else {
                destination.initializeMemory(as: UInt8.self, repeating: 0)
            }
        }
    }

    mutating func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) {
        forEachPiece(offset: offset, length: UInt64(buffer.count)) { page, inPage, done, count in
            // The defaulted subscript mutates the stored page in place (no copy of the page).
            pages[page, default: Self.zeroPage].withUnsafeMutableBytes { target in
                UnsafeMutableRawBufferPointer(rebasing: target[inPage..<(inPage + count)])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[done..<(done + count)]))
            }
        }
    }

    mutating func zero(at offset: UInt64, length: UInt64) {
        guard length > 0 else { return }
        let size = UInt64(Self.pageSizeBytes)
        let pagesInRange = (offset + length - 1) / size - offset / size + 1
        if pagesInRange > UInt64(pages.count) {
            // A wide hole over a sparse image: visit only the pages that exist.
            let end = offset + length
            for page in pages.keys where page * size < end && (page + 1) * size > offset {
                let start = max(offset, page * size)
                zeroWithinPage(page, inPage: Int(start - page * size), count: Int(min(end, (page + 1) * size) - start))
            }
        } else {
            forEachPiece(offset: offset, length: length) { page, inPage, _, count in
                zeroWithinPage(page, inPage: inPage, count: count)
            }
        }
    }

    private mutating func zeroWithinPage(_ page: UInt64, inPage: Int, count: Int) {
        if count == Self.pageSizeBytes {
            pages.removeValue(forKey: page)
        } else if pages[page] != nil {
            pages[page]!.withUnsafeMutableBytes { target in
                _ = UnsafeMutableRawBufferPointer(rebasing: target[inPage..<(inPage + count)])
                    .initializeMemory(as: UInt8.self, repeating: 0)
            }
        }
    }

    private static let zeroPage = [UInt8](repeating: 0, count: pageSizeBytes)

    /// Cuts `offset..<offset+length` at page boundaries and calls `body(page, offsetInPage,
    /// bytesDoneBefore, count)` for each piece, in order.
    private func forEachPiece(offset: UInt64, length: UInt64, _ body: (UInt64, Int, Int, Int) -> Void) {
        let size = UInt64(Self.pageSizeBytes)
        var done: UInt64 = 0
        while done < length {
            let position = offset + done
            let inPage = position % size
            let count = min(size - inPage, length - done)
            body(position / size, Int(inPage), Int(done), Int(count))
            done += count
        }
    }
}
