//! [`Live`]: a value that SIGHUP may replace while requests read it. Readers take a snapshot
//! (an `Arc`) and keep it for the whole of what they do, so one request never sees half of an
//! old table and half of a new one; a reload swaps the `Arc` for new readers.

use std::sync::{Arc, PoisonError, RwLock};

/// A value replaced as a whole at run time (identities, API keys, tenants, limits, TLS).
#[derive(Debug)]
pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    pub fn new(value: T) -> Self {
        Self::from_arc(Arc::new(value))
    }

    pub fn from_arc(value: Arc<T>) -> Self {
        Self(RwLock::new(value))
    }

    /// The current value; hold it for as long as one decision needs it to stay the same.
    pub fn get(&self) -> Arc<T> {
        // The lock only guards an `Arc` swap: a panic while it was held left a whole `Arc`.
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the value for every later reader; snapshots already taken stay as they are.
    pub fn set(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_outlives_a_swap() {
        let l = Live::new(1);
        let before = l.get();
        l.set(Arc::new(2));
        assert_eq!((*before, *l.get()), (1, 2));
    }
}
