//! The sender's deadline timer (linger, retries, timeouts).
//!
//! Tokio's timer counts whole milliseconds and rounds every sleep up, and the runtime's
//! `epoll_wait` rounds its timeout up again: a 1 ms linger closed batches 1 to 3 ms after
//! their first record. On Linux the sender sleeps on a `timerfd` instead, which the kernel
//! fires with its high-resolution timers and the runtime's reactor delivers like any other
//! readiness, so a batch closes within tens of microseconds of its linger. Elsewhere, or if
//! the timerfd cannot be made, it falls back to Tokio's timer.

use std::time::Instant;

/// Sleeps until a deadline, as precisely as the platform allows.
#[derive(Debug)]
pub(super) struct Timer {
    #[cfg(target_os = "linux")]
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    /// The deadline the timerfd is set to.
    #[cfg(target_os = "linux")]
    armed: Option<Instant>,
}

impl Timer {
    /// A timer; call it within the runtime (the timerfd registers with its reactor).
    pub(super) fn new() -> Self {
        Self {
            #[cfg(target_os = "linux")]
            fd: linux::timerfd(),
            #[cfg(target_os = "linux")]
            armed: None,
        }
    }

    /// Completes at `deadline` (at once if it has passed). Dropping the future before then is
    /// fine: the next call re-arms the timer if the deadline changed.
    pub(super) async fn sleep_until(&mut self, deadline: Instant) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            match linux::sleep_until(fd, &mut self.armed, deadline).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "timerfd failed; using the runtime's timer");
                    self.fd = None;
                }
            }
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::time::{Duration, Instant};

    use rustix::time::{
        Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
        timerfd_settime,
    };
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    pub(super) fn timerfd() -> Option<AsyncFd<OwnedFd>> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .ok()?;
        // SAFETY: the `OwnedFd` is a valid, open descriptor, and the `AsyncFd` owns it: it
        // stays open and the same until the `AsyncFd` is dropped. We are on the runtime (the
        // sender task), so a reactor is set.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
    }

    /// An armed expiry this far away is kept when the deadline moves later: it fires early
    /// and the sleep re-arms then. Deadlines that creep forward, such as the request
    /// timeout of the oldest request in flight, which moves with every response, then cost
    /// a `timerfd_settime` per expiry instead of one per request. Nearer expiries (lingers)
    /// are re-armed at once, so they never cost an early wake-up.
    const KEEP_EARLIER: Duration = Duration::from_millis(100);

    pub(super) async fn sleep_until(
        fd: &AsyncFd<OwnedFd>,
        armed: &mut Option<Instant>,
        deadline: Instant,
    ) -> io::Result<()> {
        loop {
            let now = Instant::now();
            if deadline <= now {
                return Ok(());
            }
            let keep =
                armed.is_some_and(|a| a == deadline || (a < deadline && a > now + KEEP_EARLIER));
            if !keep {
                arm(fd, deadline - now)?;
                *armed = Some(deadline);
            }
            wait(fd).await?;
            *armed = None;
        }
    }

    /// Sets the timer to expire `left` from now, forgetting an expiry not yet read.
    fn arm(fd: &AsyncFd<OwnedFd>, left: Duration) -> io::Result<()> {
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let spec = Itimerspec {
            it_interval: zero,
            it_value: Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: left.subsec_nanos().into(),
            },
        };
        timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
        Ok(())
    }

    /// Waits for the timer's expiry and reads it.
    async fn wait(fd: &AsyncFd<OwnedFd>) -> io::Result<()> {
        loop {
            let mut ready = fd.readable().await?;
            let mut expirations = [0u8; 8];
            match rustix::io::read(fd.get_ref(), &mut expirations) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn sleeps_until_the_deadline_and_survives_a_dropped_sleep() {
        let mut timer = Timer::new();
        #[cfg(target_os = "linux")]
        assert!(timer.fd.is_some(), "a timerfd on Linux");
        let start = Instant::now();
        let deadline = start + Duration::from_millis(300);
        // A sleep dropped before its deadline, then one for a later deadline.
        let dropped = tokio::time::timeout(Duration::from_millis(5), timer.sleep_until(deadline));
        assert!(dropped.await.is_err(), "not before the deadline");
        timer.sleep_until(deadline).await;
        assert!(Instant::now() >= deadline);
        let later = Instant::now() + Duration::from_millis(10);
        timer.sleep_until(later).await;
        assert!(Instant::now() >= later);
        // A deadline in the past completes at once, and a re-armed, shorter one wins.
        timer.sleep_until(start).await;
        let far = Instant::now() + Duration::from_secs(3600);
        let near = Instant::now() + Duration::from_millis(5);
        assert!(
            tokio::time::timeout(Duration::from_millis(5), timer.sleep_until(far))
                .await
                .is_err()
        );
        timer.sleep_until(near).await;
        assert!(Instant::now() >= near);
    }

    #[tokio::test]
    async fn a_deadline_that_moves_later_completes_at_the_new_one() {
        let mut timer = Timer::new();
        // Armed 300 ms ahead (far enough to be kept when the deadline moves later), dropped.
        let first = Instant::now() + Duration::from_millis(300);
        let dropped = tokio::time::timeout(Duration::from_millis(5), timer.sleep_until(first));
        assert!(dropped.await.is_err());
        #[cfg(target_os = "linux")]
        assert_eq!(timer.armed, Some(first), "the timerfd stays armed");
        // The later deadline: the kept expiry fires first, and the sleep goes on to its own.
        let second = first + Duration::from_millis(100);
        timer.sleep_until(second).await;
        assert!(Instant::now() >= second, "never before its deadline");
        #[cfg(target_os = "linux")]
        assert_eq!(timer.armed, None, "the expiry was read");
    }
}
