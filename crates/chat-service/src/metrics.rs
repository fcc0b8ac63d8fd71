//! [`Registry`]: the Prometheus registry of one application (not the global one, so tests can
//! run several applications in one process), with the service's prefix on every name.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, TextEncoder,
};

/// A prefixed registry. The register helpers panic on an invalid or twice-registered name: the
/// names are static, so that is a bug found by the first test.
#[derive(Debug, Clone)]
pub struct Registry {
    registry: prometheus::Registry,
}

impl Registry {
    /// A registry whose metrics are named `<prefix>_<name>`.
    pub fn new(prefix: &str) -> Self {
        let registry = prometheus::Registry::new_custom(Some(prefix.into()), None)
            .expect("a static prefix is valid");
        Self { registry }
    }

    /// Registers any collector and gives it back.
    pub fn register<T: Collector + Clone + 'static>(&self, collector: T) -> T {
        self.registry
            .register(Box::new(collector.clone()))
            .expect("registered once");
        collector
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid metric"))
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(Histogram::with_opts(opts).expect("valid metric"))
    }

    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(HistogramVec::new(opts, labels).expect("valid metric"))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding does not fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_the_prefix() {
        let registry = Registry::new("chat_test");
        registry.counter("events_total", "Events").inc_by(3);
        let by_kind = registry.counter_vec("kinds_total", "Events by kind", &["kind"]);
        by_kind.with_label_values(&["a"]).inc();
        registry.gauge("open", "Open things").set(2);
        registry
            .histogram("wait_seconds", "Waits", &[0.1, 1.0])
            .observe(0.5);
        let text = registry.render();
        assert!(text.contains("chat_test_events_total 3"), "{text}");
        assert!(
            text.contains("chat_test_kinds_total{kind=\"a\"} 1"),
            "{text}"
        );
        assert!(text.contains("chat_test_open 2"), "{text}");
        assert!(
            text.contains("chat_test_wait_seconds_bucket{le=\"1\"} 1"),
            "{text}"
        );
    }
}
