// swift-tools-version: 6.2
import PackageDescription

/// Every target of Tally's own is built with warnings as errors (locally, in ops/test and CI),
/// so a warning cannot land. Dependencies keep their warnings.
let strict: [SwiftSetting] = [.treatAllWarnings(as: .error)]

let package = Package(
    name: "tally",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "tally", targets: ["tally"])
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        // TallyCore also imports Yams's C target CYaml (libyaml's event parser: YAMLExpansion.swift);
        // a Yams release that renamed or hid it would need that file to move to a target of its own.
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
    ],
    targets: [
        // C libraries, imported as system library targets (headers only).
        .systemLibrary(name: "CLibPQ", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),

        // Pure domain: money, price sheets, rating, quota math, error catalog, tids. No I/O.
        .target(name: "TallyCore", dependencies: [.product(name: "Yams", package: "Yams")], swiftSettings: strict),
        // Thin, safe libpq wrapper.
        .target(
            name: "TallyPostgres",
            dependencies: [
                "CLibPQ",
                .product(name: "Logging", package: "swift-log"),
            ], swiftSettings: strict),
        // Outbound HTTP over libcurl (webhooks, price-sheet downloads).
        .target(name: "TallyHTTP", dependencies: ["CCurl", "TallyCore"], swiftSettings: strict),
        // Repositories and the domain's SQL.
        .target(
            name: "TallyStore",
            dependencies: [
                "TallyCore", "TallyPostgres",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ], resources: [.copy("Migrations")], swiftSettings: strict),
        // Hummingbird 2 application, and the web console's static files (Console/web).
        .target(
            name: "TallyServer",
            dependencies: [
                "TallyCore", "TallyPostgres", "TallyStore", "TallyHTTP",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ], resources: [.copy("Console/web")], swiftSettings: strict),
        .executableTarget(
            name: "tally",
            dependencies: [
                "TallyCore", "TallyPostgres", "TallyStore", "TallyServer", "TallyHTTP",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ], swiftSettings: strict),

        // Fresh databases on the real test cluster for every suite that needs PostgreSQL.
        .target(
            name: "TallyTestSupport", dependencies: ["TallyStore", "TallyPostgres"], path: "Tests/TallyTestSupport",
            swiftSettings: strict),
        .testTarget(name: "TallyCoreTests", dependencies: ["TallyCore", "TallyTestSupport"], swiftSettings: strict),
        .testTarget(
            name: "TallyPostgresTests", dependencies: ["TallyPostgres", "TallyTestSupport"],
            swiftSettings: strict),
        .testTarget(
            name: "TallyStoreTests",
            dependencies: ["TallyStore", "TallyCore", "TallyPostgres", "TallyTestSupport"],
            swiftSettings: strict),
        // The deterministic simulation of the money state machines (docs/testing.md).
        // Optimized even in debug builds: 10,000 seeds must run in well under a minute.
        .testTarget(
            name: "TallySimulationTests", dependencies: ["TallyCore"],
            swiftSettings: strict + [.unsafeFlags(["-O"])]),
        .testTarget(
            name: "TallyServerTests",
            dependencies: [
                "TallyServer", "TallyStore", "TallyCore", "TallyPostgres", "TallyTestSupport", "TallyHTTP",
                .product(name: "Crypto", package: "swift-crypto"), .product(name: "Yams", package: "Yams"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ], swiftSettings: strict),
    ],
    swiftLanguageModes: [.v6]
)
