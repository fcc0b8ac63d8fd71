//! The readiness flags: set by the pipeline (a dependency is failing) and by the shutdown path
//! (draining), read by `/readyz`. Their own module so that both sides depend on it, not on each
//! other.

use std::sync::atomic::AtomicBool;

/// Flags the pipeline and the shutdown path set, read by `/readyz`.
#[derive(Debug)]
pub struct Health {
    pub draining: AtomicBool,
    /// False while a batch step is being retried because a dependency failed.
    pub dependencies_ok: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            draining: AtomicBool::new(false),
            dependencies_ok: AtomicBool::new(true),
        }
    }
}
