// The libfuse low-level operations table: one C-callable closure per request kind, each a thin
// adapter from libfuse's arguments to a FileSystem method and back through `answer`. It is
// built inside a function on purpose: closures written at the top level of main.swift would be
// main-actor code and trap on the first worker thread that runs them.
#if canImport(Glibc)
import Glibc
#endif
import CFuse3
import LunEngine

/// The largest read and write request the session takes (max_read, max_write).
let maximumRequestBytes: UInt32 = 1 << 20

func makeOperationsTable() -> fuse_lowlevel_ops {
    var ops = fuse_lowlevel_ops()

    ops.`init` = { userdata, connection in
        guard let connection else { return }
        connection.pointee.max_write = maximumRequestBytes
        // Must match the max_read mount option, or the kernel refuses INIT with EPROTO.
        connection.pointee.max_read = maximumRequestBytes
        connection.pointee.max_readahead = min(connection.pointee.max_readahead, maximumRequestBytes)
        // The writeback cache (on unless -o no_writeback_cache) lets buffered writes return at
        // page-cache speed; errors then surface at fsync and close (KernelPageCache). Splice
        // slowed large reads in measurements, so it stays off; ASYNC_DIO is essential for O_DIRECT.
        let writeback = userdata.map { Unmanaged<FileSystem>.fromOpaque($0).takeUnretainedValue().options.writebackCache } ?? false
        if writeback && connection.pointee.capable & UInt32(FUSE_CAP_WRITEBACK_CACHE) != 0 {
            connection.pointee.want |= UInt32(FUSE_CAP_WRITEBACK_CACHE)
        } else {
            connection.pointee.want &= ~UInt32(FUSE_CAP_WRITEBACK_CACHE)
        }
        connection.pointee.want &= ~UInt32(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE)
        // Only this mount changes an image, so the kernel need not re-check the size (a
        // GETATTR, which costs the engine a walk of the disk's map) before cached reads.
        connection.pointee.want &= ~UInt32(FUSE_CAP_AUTO_INVAL_DATA)
        if connection.pointee.capable & UInt32(FUSE_CAP_ASYNC_DIO) != 0 {
            connection.pointee.want |= UInt32(FUSE_CAP_ASYNC_DIO)
        }
        if let userdata {
            let fs = Unmanaged<FileSystem>.fromOpaque(userdata).takeUnretainedValue()
            fs.log.write("session: kernel protocol \(connection.pointee.proto_major).\(connection.pointee.proto_minor), max_write \(connection.pointee.max_write), max_readahead \(connection.pointee.max_readahead), writeback cache \(connection.pointee.want & UInt32(FUSE_CAP_WRITEBACK_CACHE) != 0 ? "on" : "off")")
        }
    }

    // Inode numbers are arithmetic (see MountedNode): no lookup counts to keep.
    ops.forget = { request, _, _ in fuse_reply_none(request) }
    ops.forget_multi = { request, _, _ in fuse_reply_none(request) }

    ops.lookup = { request, parent, name in
        answer(request, "lookup", "ino \(parent) name \(describe(name))", { fs throws(FuseFailure) in
            try fs.lookup(parent: parent, name: fs.checkedName(name!))
        }, reply: { entry in
            var entry = entry
            return fuse_reply_entry(request, &entry)
        })
    }

    ops.getattr = { request, ino, _ in
        answer(request, "getattr", "ino \(ino)", { fs throws(FuseFailure) in
            (try fs.attributes(of: fs.resolve(ino)), fs.options.attributeTimeoutSeconds)
        }, reply: { attributes, timeout in
            var attributes = attributes
            return fuse_reply_attr(request, &attributes, timeout)
        })
    }

    ops.setattr = { request, ino, wanted, fields, info in
        answer(request, "setattr", "ino \(ino) fields 0x\(String(fields, radix: 16))", { fs throws(FuseFailure) in
            (try fs.setAttributes(ino, wanted!.pointee, fields: fields, handle: info?.pointee.fh), fs.options.attributeTimeoutSeconds)
        }, reply: { attributes, timeout in
            var attributes = attributes
            return fuse_reply_attr(request, &attributes, timeout)
        })
    }

    ops.readlink = { request, ino in
        refuse(request, "readlink", "ino \(ino)", FuseFailure(EINVAL, "the tree has no symbolic links"))
    }

    ops.mknod = { request, parent, name, _, _ in
        refuse(request, "mknod", "ino \(parent) name \(describe(name))", FuseFailure(EPERM, "only mkdir creates names (disks and snapshots)"))
    }

    ops.mkdir = { request, parent, name, _ in
        answer(request, "mkdir", "ino \(parent) name \(describe(name))", { fs throws(FuseFailure) in
            try fs.makeDirectory(parent: parent, name: fs.checkedName(name!))
        }, reply: { entry in
            var entry = entry
            return fuse_reply_entry(request, &entry)
        })
    }

    ops.unlink = { request, parent, name in
        answerStatus(request, "unlink", "ino \(parent) name \(describe(name))") { fs throws(FuseFailure) in
            try fs.unlink(parent: parent, name: fs.checkedName(name!))
        }
    }

    ops.rmdir = { request, parent, name in
        answerStatus(request, "rmdir", "ino \(parent) name \(describe(name))") { fs throws(FuseFailure) in
            try fs.removeDirectory(parent: parent, name: fs.checkedName(name!))
        }
    }

    ops.symlink = { request, _, parent, name in
        refuse(request, "symlink", "ino \(parent) name \(describe(name))", FuseFailure(EPERM, "the tree has no symbolic links"))
    }

    ops.link = { request, ino, parent, name in
        refuse(request, "link", "ino \(ino) to ino \(parent) name \(describe(name))", FuseFailure(EPERM, "the tree has no hard links"))
    }

    ops.rename = { request, parent, name, newParent, newName, flags in
        answerStatus(request, "rename", "ino \(parent) name \(describe(name)) to ino \(newParent) name \(describe(newName))") { fs throws(FuseFailure) in
            try fs.rename(parent: parent, name: fs.checkedName(name!), newParent: newParent, newName: fs.checkedName(newName!), flags: flags)
        }
    }

    ops.open = { request, ino, info in
        answer(request, "open", "ino \(ino)", { fs throws(FuseFailure) in
            (try fs.openImage(ino, flags: info!.pointee.flags, openerPID: requestPID(request)), fs.options.directIO, fs)
        }, reply: { opened, directIO, fs in
            configure(info!, for: opened, directIO: directIO)
            let status = fuse_reply_open(request, info)
            // No RELEASE follows an open the caller never got.
            if status != 0 { fs.closeImage(handle: info!.pointee.fh) }
            return status
        })
    }

    ops.create = { request, parent, name, _, info in
        answer(request, "create", "ino \(parent) name \(describe(name))", { fs throws(FuseFailure) in
            let (entry, opened) = try fs.createFile(parent: parent, name: fs.checkedName(name!), flags: info!.pointee.flags, openerPID: requestPID(request))
            return (entry, opened, fs.options.directIO, fs)
        }, reply: { entry, opened, directIO, fs in
            var entry = entry
            configure(info!, for: opened, directIO: directIO)
            let status = fuse_reply_create(request, &entry, info)
            if status != 0 { fs.closeImage(handle: info!.pointee.fh) }
            return status
        })
    }

    ops.read = { request, ino, size, offset, info in
        answer(request, "read", "ino \(ino) offset \(offset) size \(size)", { fs throws(FuseFailure) in
            try fs.read(handle: info!.pointee.fh, size: size, offset: offset)
        }, reply: { buffer in
            buffer.send(request)
        })
    }

    ops.write = { request, ino, bytes, size, offset, info in
        answer(request, "write", "ino \(ino) offset \(offset) size \(size)", { fs throws(FuseFailure) in
            try fs.write(handle: info!.pointee.fh, bytes: UnsafeRawBufferPointer(start: bytes, count: size), offset: offset,
                         fromWriteBack: lunfs_fi_writepage(info!) != 0)
        }, reply: { written in
            fuse_reply_write(request, written)
        })
    }

    // flush runs at every close(2); committing there would make each close an fsync. It
    // fails only with a write-back refused since the last close (KernelPageCache).
    ops.flush = { request, ino, info in
        answerStatus(request, "flush", "ino \(ino)") { fs throws(FuseFailure) in
            if let info { try fs.flushImage(handle: info.pointee.fh, pid: requestPID(request)) }
        }
    }
    ops.release = { request, _, info in
        if let info { FileSystem.of(request).closeImage(handle: info.pointee.fh) }
        _ = fuse_reply_err(request, 0)
    }

    ops.fsync = { request, ino, _, info in
        answerStatus(request, "fsync", "ino \(ino)") { fs throws(FuseFailure) in try fs.synchronize(handle: info?.pointee.fh) }
    }

    ops.opendir = { request, ino, info in
        answer(request, "opendir", "ino \(ino)", { fs throws(FuseFailure) in
            _ = try fs.directoryDisk(ino)
        }, reply: {
            info!.pointee.fh = 0
            return fuse_reply_open(request, info)
        })
    }

    ops.readdir = { request, ino, size, offset, _ in
        answer(request, "readdir", "ino \(ino) offset \(offset)", { fs throws(FuseFailure) in
            try fs.readDirectory(request, ino: ino, capacity: size, offset: Int(offset))
        }, reply: { buffer in
            buffer.send(request)
        })
    }

    ops.releasedir = { request, _, _ in fuse_reply_err(request, 0) }

    ops.fsyncdir = { request, ino, _, _ in
        answerStatus(request, "fsyncdir", "ino \(ino)") { fs throws(FuseFailure) in try fs.synchronize() }
    }

    ops.statfs = { request, ino in
        answer(request, "statfs", "ino \(ino)", { fs throws(FuseFailure) in
            fs.fileSystemStatistics()
        }, reply: { statistics in
            var statistics = statistics
            return fuse_reply_statfs(request, &statistics)
        })
    }

    ops.setxattr = { request, ino, name, value, size, flags in
        answerStatus(request, "setxattr", "ino \(ino) name \(describe(name))") { fs throws(FuseFailure) in
            let text = String(cString: name!)
            try fs.setAttribute(ino, name: text, value: UnsafeRawBufferPointer(start: value, count: size), flags: flags)
        }
    }

    ops.getxattr = { request, ino, name, size in
        answer(request, "getxattr", "ino \(ino) name \(describe(name))", { fs throws(FuseFailure) in
            try fs.getAttribute(ino, name: String(cString: name!), capacity: size)
        }, reply: { reply in
            sendAttributeReply(request, reply)
        })
    }

    ops.listxattr = { request, ino, size in
        answer(request, "listxattr", "ino \(ino)", { fs throws(FuseFailure) in
            try fs.listAttributes(ino, capacity: size)
        }, reply: { reply in
            sendAttributeReply(request, reply)
        })
    }

    ops.removexattr = { request, ino, name in
        answerStatus(request, "removexattr", "ino \(ino) name \(describe(name))") { fs throws(FuseFailure) in
            try fs.removeAttribute(ino, name: String(cString: name!))
        }
    }

    ops.fallocate = { request, ino, mode, offset, length, info in
        answerStatus(request, "fallocate", "ino \(ino) mode 0x\(String(mode, radix: 16)) offset \(offset) length \(length)") { fs throws(FuseFailure) in
            try fs.allocate(handle: info!.pointee.fh, mode: mode, offset: offset, length: length)
        }
    }

    ops.copy_file_range = { request, sourceIno, sourceOffset, sourceInfo, targetIno, targetOffset, targetInfo, length, _ in
        answer(request, "copy_file_range", "ino \(sourceIno) offset \(sourceOffset) to ino \(targetIno) offset \(targetOffset) length \(length)", { fs throws(FuseFailure) in
            try fs.copyRange(from: sourceInfo!.pointee.fh, at: sourceOffset, to: targetInfo!.pointee.fh, at: targetOffset, length: length)
        }, reply: { copied in
            fuse_reply_write(request, copied)
        })
    }

    ops.lseek = { request, ino, offset, whence, info in
        answer(request, "lseek", "ino \(ino) offset \(offset) whence \(whence)", { fs throws(FuseFailure) in
            try fs.seek(handle: info!.pointee.fh, offset: offset, whence: whence)
        }, reply: { position in
            fuse_reply_lseek(request, position)
        })
    }

    return ops
}

/// Fills in the open reply for an image: its handle, and how the kernel should cache it.
private func configure(_ info: UnsafeMutablePointer<fuse_file_info>, for opened: OpenImage, directIO: Bool) {
    info.pointee.fh = opened.retainedHandle()
    // A change file changes with its disk's writes and no invalidation follows them: never cached.
    let directIO = directIO || opened.isChanges
    lunfs_fi_set_direct_io(info, directIO ? 1 : 0)
    // Only this mount changes an image, and the kernel drops what a truncate or hole punch
    // changes, so pages cached at the last close are still good at the next open.
    lunfs_fi_set_keep_cache(info, directIO ? 0 : 1)
}

private func sendAttributeReply(_ request: fuse_req_t?, _ reply: AttributeReply) -> Int32 {
    switch reply {
    case .size(let size):
        return fuse_reply_xattr(request, size)
    case .bytes(let bytes):
        return bytes.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { fuse_reply_buf(request, $0.baseAddress, $0.count) }
        }
    }
}

/// The process that sent a request (0 when the kernel sends it on no process's behalf).
private func requestPID(_ request: fuse_req_t?) -> pid_t {
    fuse_req_ctx(request)?.pointee.pid ?? 0
}

/// A name from the kernel for a log line.
private func describe(_ name: UnsafePointer<CChar>?) -> String {
    guard let name else { return "(none)" }
    // Control characters are escaped, so that no name can forge a log line.
    let text = String(cString: name).unicodeScalars.map { scalar in
        scalar.value < 0x20 || scalar.value == 0x7f ? "\\x" + String(scalar.value, radix: 16) : String(scalar)
    }.joined()
    return text.utf8.count > 64 ? "\"\(text.prefix(32))...\" (\(text.utf8.count) bytes)" : "\"\(text)\""
}
