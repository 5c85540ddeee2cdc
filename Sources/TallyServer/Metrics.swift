import Metrics
import Prometheus
import TallyStore

/// The process-wide Prometheus registry behind swift-metrics; `/metrics` renders it.
public enum TallyMetrics {
    public static let registry = PrometheusCollectorRegistry()

    private static let bootstrapped: Void = {
        var factory = PrometheusMetricsFactory(registry: registry)
        for label in [AuthorizeMetrics.journalCommitLabel, AuthorizeMetrics.refillLabel] {
            factory.durationHistogramBuckets[label] = AuthorizeMetrics.durationBuckets
        }
        factory.valueHistogramBuckets[AuthorizeMetrics.journalBatchLabel] = AuthorizeMetrics.batchBuckets
        MetricsSystem.bootstrap(factory)
        // Printed as 0 from the start: an alert on its increase() sees the first failure only
        // against an earlier sample (TallyHoldJournalFailing).
        AuthorizeMetrics.journalFailures.increment(by: 0)
    }()

    /// Installs the Prometheus backend once per process (tests build many applications).
    public static func bootstrap() { _ = bootstrapped }
}
