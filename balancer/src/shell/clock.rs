//! The proxy's clock: maps `Instant` to the core's `Nanos`, so policies and windows that the
//! simulator drives in virtual time see the same kind of number from the live proxy.

use ebbtide_config::time::Nanos;
use std::time::Instant;

/// Monotonic nanoseconds since the clock was made.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock whose origin is now. Starts at 1 so that 0 can mean "never" in atomics.
    pub fn new() -> Self {
        Clock {
            origin: Instant::now() - std::time::Duration::from_nanos(1),
        }
    }

    /// Nanoseconds since the origin.
    #[inline]
    pub fn now(&self) -> Nanos {
        self.origin.elapsed().as_nanos() as Nanos
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
