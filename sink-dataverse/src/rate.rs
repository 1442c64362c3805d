//! Staying within Dataverse's service protection limits: one limiter shared by every request.
//!
//! [`Controller`] is the policy, as pure state driven by the caller's clock: concurrency starts at
//! `max_concurrency`; a 429 pauses everyone until its `Retry-After` has passed and halves the
//! concurrency (once per throttling episode, however many in-flight requests come back 429);
//! every `ramp_up_after` successes add one back; `x-ms-dop-hint` caps it. [`Limiter`] applies the
//! policy to requests: a permit per HTTP request in flight.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

/// The throttling policy's state.
#[derive(Debug, Clone)]
pub struct Controller {
    /// Configured ceiling (≤ 52).
    max: usize,
    /// Current concurrency before the hint cap.
    limit: usize,
    /// Dataverse's recommended degree of parallelism, when it sent one.
    hint: Option<usize>,
    ramp_up_after: u32,
    successes: u32,
    paused_until: Option<Instant>,
    /// Bumped on every cut, so the other 429s of the same episode do not cut again.
    epoch: u64,
}

impl Controller {
    pub fn new(max: usize, ramp_up_after: u32) -> Self {
        let max = max.max(1);
        Controller {
            max,
            limit: max,
            hint: None,
            ramp_up_after: ramp_up_after.max(1),
            successes: 0,
            paused_until: None,
            epoch: 0,
        }
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.limit.min(self.cap())
    }

    fn cap(&self) -> usize {
        self.hint.map_or(self.max, |h| h.clamp(1, self.max))
    }

    /// The current throttling episode; a request remembers it when it starts.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How long every writer must still wait.
    pub fn paused_for(&self, now: Instant) -> Option<Duration> {
        self.paused_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// A request started in `epoch` was answered 429 with `retry_after`. Returns how much this
    /// lengthened the pause (for the throttled-seconds metric: overlapping 429s count once).
    pub fn throttled(&mut self, now: Instant, retry_after: Duration, epoch: u64) -> Duration {
        let until = now + retry_after;
        let added = match self.paused_until {
            Some(current) if current > now => until.saturating_duration_since(current),
            _ => retry_after,
        };
        if self.paused_until.is_none_or(|current| until > current) {
            self.paused_until = Some(until);
        }
        if epoch == self.epoch {
            self.limit = (self.limit() / 2).max(1);
            self.epoch += 1;
        }
        self.successes = 0;
        added
    }

    /// A request was answered (not 429). Returns true when the concurrency grew.
    pub fn succeeded(&mut self) -> bool {
        if self.limit >= self.cap() {
            self.limit = self.cap();
            self.successes = 0;
            return false;
        }
        self.successes += 1;
        if self.successes >= self.ramp_up_after {
            self.successes = 0;
            self.limit += 1;
            return true;
        }
        false
    }

    /// Dataverse sent `x-ms-dop-hint`. Returns true when the cap rose.
    pub fn hint(&mut self, hint: usize) -> bool {
        let before = self.cap();
        self.hint = Some(hint.max(1));
        if self.limit > self.cap() {
            self.limit = self.cap();
        }
        self.cap() > before
    }
}

#[derive(Debug)]
struct State {
    controller: Controller,
    in_flight: usize,
}

/// The shared limiter. Cheap to clone through `Arc`.
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<State>,
    changed: Notify,
}

/// The right to have one request in flight; released on drop.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
    /// The throttling episode the request started in.
    pub epoch: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.state().in_flight -= 1;
        self.limiter.changed.notify_waiters();
    }
}

impl Limiter {
    pub fn new(controller: Controller) -> Arc<Self> {
        Arc::new(Limiter {
            state: Mutex::new(State {
                controller,
                in_flight: 0,
            }),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain counters behind it; a panic elsewhere leaves them usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until no pause is in force and a slot is free, then takes it.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let pause = {
                let mut state = self.state();
                match state.controller.paused_for(Instant::now()) {
                    Some(pause) => Some(pause),
                    None if state.in_flight < state.controller.limit() => {
                        state.in_flight += 1;
                        return Permit {
                            limiter: self.clone(),
                            epoch: state.controller.epoch(),
                        };
                    }
                    None => None,
                }
            };
            match pause {
                Some(pause) => tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = &mut changed => {}
                },
                None => changed.await,
            }
        }
    }

    /// Waits out a pause that began after the permit was taken.
    pub async fn wait_unpaused(&self) {
        loop {
            let pause = self.state().controller.paused_for(Instant::now());
            match pause {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return,
            }
        }
    }

    /// Whether a 429 pause is in force now.
    pub fn is_paused(&self) -> bool {
        self.state().controller.paused_for(Instant::now()).is_some()
    }

    /// Records a 429. Returns the added pause.
    pub fn throttled(&self, retry_after: Duration, epoch: u64) -> Duration {
        let added = self
            .state()
            .controller
            .throttled(Instant::now(), retry_after, epoch);
        self.changed.notify_waiters();
        added
    }

    /// Records an answered request.
    pub fn succeeded(&self) {
        if self.state().controller.succeeded() {
            self.changed.notify_waiters();
        }
    }

    /// Records an `x-ms-dop-hint`.
    pub fn hint(&self, hint: usize) {
        if self.state().controller.hint(hint) {
            self.changed.notify_waiters();
        }
    }

    /// The concurrency allowed now.
    pub fn limit(&self) -> usize {
        self.state().controller.limit()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.state().in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_pauses_everyone_and_halves_once_per_episode() {
        let now = Instant::now();
        let mut c = Controller::new(16, 3);
        assert_eq!(c.limit(), 16);
        let epoch = c.epoch();
        // Four requests of the same episode come back 429.
        assert_eq!(
            c.throttled(now, Duration::from_secs(5), epoch),
            Duration::from_secs(5)
        );
        assert_eq!(c.limit(), 8);
        let later = now + Duration::from_secs(1);
        assert_eq!(
            c.throttled(later, Duration::from_secs(5), epoch),
            Duration::from_secs(1),
            "only the extension counts as throttled time"
        );
        assert_eq!(c.throttled(later, Duration::from_secs(2), epoch), Duration::ZERO);
        assert_eq!(c.limit(), 8, "one cut per episode");
        assert_eq!(c.paused_for(later), Some(Duration::from_secs(5)));
        assert_eq!(c.paused_for(now + Duration::from_secs(6)), None);
        // A request started after the cut and throttled again cuts again.
        let epoch = c.epoch();
        c.throttled(now + Duration::from_secs(7), Duration::from_secs(1), epoch);
        assert_eq!(c.limit(), 4);
    }

    #[test]
    fn ramps_up_by_one_per_window_never_past_the_cap() {
        let mut c = Controller::new(4, 2);
        c.throttled(Instant::now(), Duration::ZERO, c.epoch());
        c.throttled(Instant::now(), Duration::ZERO, c.epoch());
        assert_eq!(c.limit(), 1);
        let mut seen = vec![c.limit()];
        for _ in 0..10 {
            c.succeeded();
            seen.push(c.limit());
        }
        assert_eq!(seen, vec![1, 1, 2, 2, 3, 3, 4, 4, 4, 4, 4]);
        // Never below one.
        for _ in 0..5 {
            c.throttled(Instant::now(), Duration::ZERO, c.epoch());
        }
        assert_eq!(c.limit(), 1);
    }

    #[test]
    fn the_dop_hint_is_an_upper_bound() {
        let mut c = Controller::new(8, 1);
        assert!(!c.hint(3));
        assert_eq!(c.limit(), 3);
        assert!(!c.succeeded(), "no ramp past the hint");
        assert_eq!(c.limit(), 3);
        assert!(c.hint(100), "the cap rose (to the configured maximum)");
        assert_eq!(c.limit(), 3, "but concurrency ramps up, not jumps");
        for _ in 0..10 {
            c.succeeded();
        }
        assert_eq!(c.limit(), 8, "the configured maximum still holds");
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_bounds_concurrency_and_waits_out_pauses() {
        let limiter = Limiter::new(Controller::new(2, 100));
        let a = limiter.acquire().await;
        let _b = limiter.acquire().await;
        assert_eq!(limiter.in_flight(), 2);
        // A third waits for a slot.
        let third = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire().await }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        // A 429 on `a` pauses for 3 s and cuts concurrency to 1.
        let epoch = a.epoch;
        limiter.throttled(Duration::from_secs(3), epoch);
        drop(a);
        assert_eq!(limiter.limit(), 1);
        let start = Instant::now();
        drop(_b);
        let permit = third.await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_secs(3),
            "no request starts while paused ({:?})",
            start.elapsed()
        );
        assert_eq!(limiter.in_flight(), 1);
        drop(permit);
        assert_eq!(limiter.in_flight(), 0);
    }
}
