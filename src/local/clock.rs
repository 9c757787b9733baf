//! The endpoint's clock: where it reads the time for every decision it makes about a
//! client — a token's time window, a connection's maximum age, the handshake timeout, the
//! connection-rate and cancel buckets.
//!
//! [`Clock::system`], the default, is the system's wall clock for tokens and tokio's
//! monotonic clock for the rest (so `tokio::time::pause` drives it in unit tests). A
//! [`ManualClock`] stands still until its owner steps it: a test of a one-second token or
//! of a connection's maximum age steps it instead of sleeping, and cannot race a loaded
//! machine. The clock is chosen only in-process, in
//! [`EndpointOptions::clock`](super::EndpointOptions::clock): the binary has no flag,
//! variable or file that sets it, so nobody can shift a running endpoint's clock to
//! stretch a token's life. Certificates stay on the system's clock: clients check them
//! against theirs.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

/// The time source of a [`LocalEndpoint`](super::LocalEndpoint): the system's, or a
/// [`ManualClock`]'s.
#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<Arc<Manual>>,
}

/// A stopped clock: the time it was started at plus how far it has been stepped.
struct Manual {
    wall: SystemTime,
    base: Instant,
    stepped: watch::Sender<Duration>,
}

impl Manual {
    fn stepped(&self) -> Duration {
        *self.stepped.borrow()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.manual {
            None => f.write_str("Clock::system"),
            Some(m) => write!(f, "Clock::manual(+{:?})", m.stepped()),
        }
    }
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// Wall-clock time, for a token's time window.
    pub fn now(&self) -> SystemTime {
        match &self.manual {
            None => SystemTime::now(),
            Some(m) => m.wall + m.stepped(),
        }
    }

    /// Monotonic time, for ages, timeouts and rates.
    pub fn instant(&self) -> Instant {
        match &self.manual {
            None => Instant::now(),
            Some(m) => m.base + m.stepped(),
        }
    }

    /// Resolves once [`Clock::instant`] reaches `deadline`.
    pub async fn sleep_until(&self, deadline: Instant) {
        let Some(m) = &self.manual else {
            return tokio::time::sleep_until(deadline).await;
        };
        let mut stepped = m.stepped.subscribe();
        // Only the owner's handle steps it; once that is gone, the time never comes.
        if stepped.wait_for(|d| m.base + *d >= deadline).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// `work`'s output, or `None` when `after` passes on this clock first.
    pub async fn timeout<F: Future>(&self, after: Duration, work: F) -> Option<F::Output> {
        let deadline = self.instant() + after;
        tokio::select! {
            out = work => Some(out),
            () = self.sleep_until(deadline) => None,
        }
    }
}

/// A clock that stands still until [`ManualClock::advance`] steps it, for tests: give
/// [`ManualClock::clock`] to the endpoint and keep this handle. Dropping every handle
/// freezes the clock for good.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<Manual>,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("stepped", &self.inner.stepped())
            .finish()
    }
}

impl ManualClock {
    /// A clock standing at `wall` (wall-clock time) and at tokio's `Instant::now()`.
    pub fn new(wall: SystemTime) -> ManualClock {
        ManualClock {
            inner: Arc::new(Manual {
                wall,
                base: Instant::now(),
                stepped: watch::Sender::new(Duration::ZERO),
            }),
        }
    }

    /// A clock standing at the current time.
    pub fn starting_now() -> ManualClock {
        ManualClock::new(SystemTime::now())
    }

    /// The clock for [`EndpointOptions::clock`](super::EndpointOptions::clock).
    pub fn clock(&self) -> Clock {
        Clock {
            manual: Some(self.inner.clone()),
        }
    }

    /// Steps the clock forward by `by`, waking whatever waits for a time it now reached.
    pub fn advance(&self, by: Duration) {
        self.inner.stepped.send_modify(|d| *d += by);
    }

    /// The clock's wall-clock time.
    pub fn now(&self) -> SystemTime {
        self.clock().now()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    #[tokio::test]
    async fn a_manual_clock_stands_still_until_stepped() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let manual = ManualClock::new(start);
        let clock = manual.clock();
        let at = clock.instant();
        assert_eq!(clock.now(), start);
        let deadline = at + Duration::from_secs(3600);
        let waiting = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(deadline).await }
        });
        let slow = clock.timeout(Duration::from_secs(10), std::future::pending::<()>());
        tokio::pin!(slow);
        assert!(slow.as_mut().now_or_never().is_none());
        manual.advance(Duration::from_secs(9));
        tokio::task::yield_now().await;
        assert!(slow.as_mut().now_or_never().is_none(), "9 s < 10 s");
        assert!(!waiting.is_finished());
        manual.advance(Duration::from_secs(3591));
        assert_eq!(slow.await, None, "timed out on the clock's time");
        waiting.await.unwrap();
        assert_eq!(clock.now(), start + Duration::from_secs(3600));
        assert_eq!(clock.instant(), deadline);
        assert_eq!(
            clock.timeout(Duration::from_secs(1), async { 7 }).await,
            Some(7)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_system_clock_is_tokio_s() {
        let clock = Clock::system();
        let at = clock.instant();
        let got = clock
            .timeout(Duration::from_secs(10), std::future::pending::<()>())
            .await;
        assert_eq!(got, None);
        assert_eq!(clock.instant() - at, Duration::from_secs(10));
        assert!(format!("{clock:?}").contains("system"));
    }
}
