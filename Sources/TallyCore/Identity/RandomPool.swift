import Synchronization

#if canImport(Darwin)
    import Darwin
#elseif canImport(Glibc)
    import Glibc
#endif

/// Random bytes from the operating system's CSPRNG, drawn 4 KiB at a time: one system call per
/// 256 tids instead of one per 8 bytes (`SystemRandomNumberGenerator`). For identifiers only;
/// secrets take their bytes from the system generator directly.
final class RandomPool: Sendable {
    static let shared = RandomPool()

    private struct Bytes {
        var storage = [UInt8](repeating: 0, count: 4096)
        var used = 4096
    }

    private let bytes = Mutex(Bytes())

    /// 128 fresh random bits.
    func next128() -> (UInt64, UInt64) {
        bytes.withLock { bytes in
            if bytes.used + 16 > bytes.storage.count {
                Self.fill(&bytes.storage)
                bytes.used = 0
            }
            defer { bytes.used += 16 }
            return bytes.storage.withUnsafeBytes { raw in
                (
                    raw.loadUnaligned(fromByteOffset: bytes.used, as: UInt64.self),
                    raw.loadUnaligned(fromByteOffset: bytes.used + 8, as: UInt64.self)
                )
            }
        }
    }

    /// `/dev/urandom`, opened once (the module map of Glibc has no `getrandom`); -1 where it
    /// cannot be opened.
    private static let urandom: Int32 = {
        #if canImport(Glibc)
            open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        #else
            -1
        #endif
    }()

    private static func fill(_ storage: inout [UInt8]) {
        storage.withUnsafeMutableBytes { raw in
            #if canImport(Darwin)
                arc4random_buf(raw.baseAddress!, raw.count)
            #else
                var filled = 0
                while urandom >= 0, filled < raw.count {
                    let count = read(urandom, raw.baseAddress! + filled, raw.count - filled)
                    if count > 0 {
                        filled += count
                    } else if count == 0 || errno != EINTR {
                        break
                    }
                }
                // Whatever could not be read: the standard library's generator, 8 bytes a call.
                var generator = SystemRandomNumberGenerator()
                for offset in stride(from: filled - filled % 8, to: raw.count, by: 8) {
                    raw.storeBytes(of: generator.next() as UInt64, toByteOffset: offset, as: UInt64.self)
                }
            #endif
        }
    }
}
