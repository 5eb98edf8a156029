// swift-tools-version:6.0
// lunfs: a storage virtualization engine (LunEngine) with a FUSE face (LunMount), an NBD
// server (LunNBD) and a CLI.
// No package dependencies: libfuse3 comes in through the CFuse3 system-library module map,
// liburing through the CUring C target.
import PackageDescription

let package = Package(
    name: "lunfs",
    products: [
        .executable(name: "lunfs", targets: ["lunfs"]),
        .library(name: "LunEngine", targets: ["LunEngine"]),
    ],
    targets: [
        .target(name: "CLunSys", linkerSettings: [.linkedLibrary("uring")]),
        .target(name: "LunEngine", dependencies: ["CLunSys"]),
        .target(name: "LunEngineTesting", dependencies: ["LunEngine"]),
        .systemLibrary(name: "CFuse3", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        .target(name: "LunNBD", dependencies: ["LunEngine"]),
        // FUSE over io_uring: the ring protocol and libfuse's custom-io seam (liburing-dev).
        .target(name: "CUring", linkerSettings: [.linkedLibrary("uring"), .linkedLibrary("fuse3")]),
        .target(name: "LunMount", dependencies: ["LunEngine", "LunNBD", "CFuse3", "CUring"]),
        .executableTarget(name: "lunfs", dependencies: ["CLunSys", "LunEngine", "LunMount", "LunNBD"]),
        .executableTarget(name: "lunfs-engine-figures", dependencies: ["LunEngine", "LunEngineTesting"],
                          path: "Benchmarks/EngineFigures"),
        .testTarget(name: "LunEngineTests", dependencies: ["LunEngine", "LunEngineTesting"]),
        .testTarget(name: "LunMountTests", dependencies: ["LunEngine", "LunEngineTesting", "lunfs"]),
    ]
)
