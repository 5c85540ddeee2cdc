import Metrics
import Prometheus

/// The process-wide Prometheus registry behind swift-metrics; `/metrics` renders it.
public enum TallyMetrics {
    public static let registry = PrometheusCollectorRegistry()

    private static let bootstrapped: Void = {
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    }()

    /// Installs the Prometheus backend once per process (tests build many applications).
    public static func bootstrap() { _ = bootstrapped }
}
