//! Staying within Dataverse's service protection limits: one limiter shared by every request.
//!
//! [`Controller`] is the policy, as pure state driven by the caller's clock: concurrency starts at
//! `max_concurrency`; a 429 pauses everyone until its `Retry-After` has passed and halves the
//! concurrency (once per throttling episode, however many in-flight requests come back 429);
//! every `ramp_up_after` successes add one back; `x-ms-dop-hint` caps it. [`Limiter`] applies the
//! policy to requests: a permit per HTTP request in flight.
//!
//! The budget is paced rather than discovered through 429s. Every Dataverse answer says what is
//! left of the service protection window (`x-ms-ratelimit-time-remaining-xrm-requests`, in
//! milliseconds of execution time, and `x-ms-ratelimit-burst-remaining-xrm-requests`); the most
//! ever reported left is the window's budget. A request spends execution time all the while it
//! runs, so at most budget ÷ window requests can be in flight for good (1,200 s over 300 s: 4).
//! Within that, a request starts only when the sink's own use still in the window when it
//! finishes, plus the requests in flight and itself at the mean request time, stays within 97 %
//! of the budget (plus what Dataverse reports spent beyond the sink's own, when that is clearly
//! more: other clients of the same user). Until the first answer, one request at a time. When
//! the requests left fall under a tenth, starts are spaced to the window's average rate until
//! they are back above three tenths. A 429 under a known budget is an overshoot: concurrency
//! drops by one, not by half.

use std::{
    collections::VecDeque,
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
    /// What Dataverse says is left of its budget.
    budget: Budget,
}

/// Share of the execution budget the sink plans to use, leaving room for estimates that are off.
const EXECUTION_SHARE: f64 = 0.97;
/// Use reported beyond the sink's own by more than this share is taken to be other clients'.
const OTHERS_SHARE: f64 = 0.1;
/// Below this share of the request budget, request starts are spaced; above [`RELEASE_SHARE`]
/// they are not.
const BRAKE_SHARE: f64 = 0.1;
const RELEASE_SHARE: f64 = 0.3;

/// The service protection budget as Dataverse's answers describe it, and the sink's own use of
/// it.
#[derive(Debug, Clone)]
struct Budget {
    /// The service protection window (Dataverse: 300 s).
    window: Duration,
    /// Largest execution time reported left, in ms: the window's execution budget.
    execution_max_ms: f64,
    /// Execution time the last answer reported left, in ms.
    execution_left_ms: Option<f64>,
    /// Largest request count reported left: the window's request budget.
    requests_max: u64,
    /// Mean duration of a request, in ms.
    request_ms: f64,
    /// The sink's own requests that finished within the window: (when, how long), oldest first.
    finished: VecDeque<(Instant, Duration)>,
    /// Sum of `finished`'s durations.
    used: Duration,
    requests_braked: bool,
    /// While the request brake is on, no request starts before this.
    next_start: Option<Instant>,
    /// Whether any answer came back yet: until one does, one request at a time, so a start
    /// cannot spend a budget nobody has described yet.
    answered: bool,
}

impl Budget {
    fn prune(&mut self, now: Instant) {
        while let Some((at, took)) = self.finished.front().copied() {
            if at + self.window > now {
                break;
            }
            self.finished.pop_front();
            self.used = self.used.saturating_sub(took);
        }
    }

    /// How long a request starting now must wait so that, when the requests in flight and it
    /// have finished, the window holds no more than the budget's planned share.
    fn hold(&mut self, now: Instant, in_flight: usize) -> Option<Duration> {
        if self.execution_max_ms <= 0.0 || self.request_ms <= 0.0 {
            return None;
        }
        self.prune(now);
        let request = Duration::from_secs_f64(self.request_ms / 1000.0);
        let plan = self.execution_max_ms * EXECUTION_SHARE;
        let ahead = (in_flight + 1) as f64 * self.request_ms;
        // What will still be in the window when this request finishes.
        let horizon = now + request;
        let mut staying = self.used.as_secs_f64() * 1000.0;
        let mut leaving = self.finished.iter().peekable();
        while let Some((_, took)) = leaving.next_if(|(at, _)| *at + self.window <= horizon) {
            staying -= took.as_secs_f64() * 1000.0;
        }
        // Dataverse's last word is a little old: it counts only when it shows clearly more
        // spent than the sink's own use (other clients of the same application user).
        let reported = self
            .execution_left_ms
            .map_or(0.0, |left| self.execution_max_ms - left);
        let others = reported - self.used.as_secs_f64() * 1000.0;
        if others > self.execution_max_ms * OTHERS_SHARE {
            staying += others;
        }
        if staying + ahead <= plan || (in_flight == 0 && self.finished.is_empty()) {
            return None;
        }
        // Wait until enough of the sink's own use leaves the window.
        let mut need = staying + ahead - plan;
        for (at, took) in leaving {
            need -= took.as_secs_f64() * 1000.0;
            if need <= 0.0 {
                let free_at = *at + self.window;
                return Some(
                    free_at
                        .saturating_duration_since(horizon)
                        .max(Duration::from_millis(1)),
                );
            }
        }
        // Others' use, or requests in flight: look again shortly (a finishing request also wakes).
        Some(request.clamp(Duration::from_millis(1), Duration::from_secs(1)))
    }
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
            budget: Budget {
                window: Duration::from_secs(300),
                execution_max_ms: 0.0,
                execution_left_ms: None,
                requests_max: 0,
                request_ms: 0.0,
                finished: VecDeque::new(),
                used: Duration::ZERO,
                requests_braked: false,
                next_start: None,
                answered: false,
            },
        }
    }

    /// The service protection window the budget headers refer to (Dataverse's is 300 s).
    pub fn with_window(mut self, window: Duration) -> Self {
        self.budget.window = window.max(Duration::from_millis(1));
        self
    }

    /// Requests the execution budget allows in flight for good: budget ÷ window (one before the
    /// first answer; no bound when answers carry no budget).
    fn budget_cap(&self) -> usize {
        let b = &self.budget;
        if !b.answered {
            return 1;
        }
        if b.execution_max_ms <= 0.0 {
            return usize::MAX;
        }
        (b.execution_max_ms / b.window.as_secs_f64() / 1000.0)
            .ceil()
            .max(1.0) as usize
    }

    /// An answer said what is left of the budget (`None`: it did not say). Returns true when
    /// more requests may now be in flight.
    pub fn remaining(&mut self, requests: Option<u64>, execution_ms: Option<f64>) -> bool {
        let before = self.limit();
        let b = &mut self.budget;
        b.answered = true;
        if let Some(left) = execution_ms.filter(|v| v.is_finite() && *v >= 0.0) {
            b.execution_max_ms = b.execution_max_ms.max(left);
            b.execution_left_ms = Some(left);
        }
        if let Some(left) = requests {
            b.requests_max = b.requests_max.max(left);
            let share = left as f64 / b.requests_max.max(1) as f64;
            if share < BRAKE_SHARE {
                b.requests_braked = true;
            } else if share > RELEASE_SHARE {
                b.requests_braked = false;
                b.next_start = None;
            }
        }
        self.limit() > before
    }

    /// One of the sink's requests finished at `now` after running for `took`.
    pub fn finished(&mut self, now: Instant, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        let b = &mut self.budget;
        b.request_ms = if b.request_ms == 0.0 {
            ms
        } else {
            b.request_ms * 0.8 + ms * 0.2
        };
        b.finished.push_back((now, took));
        b.used += took;
        b.prune(now);
    }

    /// How long the next request must wait, if the budget holds it back: for the request brake's
    /// spacing, or until enough execution time leaves the window.
    pub fn hold(&mut self, now: Instant, in_flight: usize) -> Option<Duration> {
        let spaced = self.budget.next_start.filter(|at| *at > now).map(|at| at - now);
        spaced.or_else(|| self.budget.hold(now, in_flight))
    }

    /// A request starts now: with the request brake on, the next waits the window's average gap.
    pub fn started(&mut self, now: Instant) {
        let b = &mut self.budget;
        if b.requests_braked && b.requests_max > 0 {
            let gap = b.window.div_f64(b.requests_max as f64);
            b.next_start = Some(b.next_start.map_or(now, |at| at.max(now)) + gap);
        }
    }

    /// Whether the request brake is on.
    pub fn braked(&self) -> bool {
        self.budget.requests_braked
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.limit.min(self.cap()).min(self.budget_cap())
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
            // Paced by a known budget, a 429 is an overshoot by one request; otherwise the
            // concurrency Dataverse bears is unknown and is halved.
            self.limit = if self.budget.execution_max_ms > 0.0 {
                self.limit().saturating_sub(1)
            } else {
                self.limit() / 2
            }
            .max(1);
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
                let now = Instant::now();
                let in_flight = state.in_flight;
                let held = match state.controller.paused_for(now) {
                    Some(pause) => Some(pause),
                    None if in_flight < state.controller.limit() => state.controller.hold(now, in_flight),
                    None => None,
                };
                match held {
                    Some(pause) => Some(pause),
                    None if in_flight < state.controller.limit() => {
                        state.in_flight += 1;
                        state.controller.started(now);
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

    /// Records what an answer said is left of the budget, and how long its request took.
    pub fn remaining(&self, requests: Option<u64>, execution_ms: Option<f64>, took: Duration) {
        let grew = {
            let mut state = self.state();
            state.controller.finished(Instant::now(), took);
            state.controller.remaining(requests, execution_ms)
        };
        if grew {
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

    /// A controller that has had its first answer (with no budget headers).
    fn answered(mut c: Controller) -> Controller {
        c.remaining(None, None);
        c
    }

    #[test]
    fn one_request_at_a_time_until_the_first_answer() {
        let mut c = Controller::new(8, 20);
        assert_eq!(c.limit(), 1, "nothing known of the budget yet");
        assert!(c.remaining(None, None));
        assert_eq!(
            c.limit(),
            8,
            "an answer without budget headers: the configured maximum"
        );
    }

    #[test]
    fn a_429_pauses_everyone_and_halves_once_per_episode() {
        let now = Instant::now();
        let mut c = answered(Controller::new(16, 3));
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
        let mut c = answered(Controller::new(4, 2));
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
        let mut c = answered(Controller::new(8, 1));
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
        let limiter = Limiter::new(answered(Controller::new(2, 100)));
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

    /// The pacing rule against the emulator's own model of the service protection limits, in
    /// simulated time: Dataverse's ratios in a 10 s window (200 requests, 40 s of execution, 52
    /// concurrent), `$batch` requests of 50 operations at 30 ms each (1.5 s a request), and always
    /// more work waiting. The ceiling is 40 s ÷ 10 s ÷ 30 ms = 133 operations/s.
    #[test]
    fn paced_by_the_budget_headers_it_runs_near_the_ceiling_without_429s() {
        use dataverse_emulator::{LimitsConfig, limits};
        let window = Duration::from_secs(10);
        let mut dataverse = limits::Limiter::new(LimitsConfig {
            window_ms: 10_000,
            max_requests: 200,
            max_execution_time_ms: 40_000,
            max_concurrent: 52,
            ..LimitsConfig::default()
        });
        let mut c = Controller::new(8, 20).with_window(window);
        let (ops_per_request, took) = (50u64, Duration::from_millis(1500));
        let start = Instant::now();
        let step = Duration::from_millis(10);
        // (started, admission) of each request in flight.
        let mut in_flight: Vec<(Instant, limits::Admission)> = Vec::new();
        let (mut ops, mut ops_after_warmup, mut throttles, mut paused) = (0u64, 0u64, 0u32, Duration::ZERO);
        let warmup = Duration::from_secs(20);
        let mut now = start;
        while now < start + Duration::from_secs(120) {
            now += step;
            let (done, running): (Vec<_>, Vec<_>) = in_flight
                .into_iter()
                .partition(|(started, _)| now >= *started + took);
            in_flight = running;
            for (started, admission) in done {
                dataverse.finish("sink", started, now);
                c.finished(now, now - started);
                c.remaining(
                    Some(admission.remaining_requests),
                    Some(admission.remaining_execution_ms as f64),
                );
                c.succeeded();
                ops += ops_per_request;
                if now >= start + warmup {
                    ops_after_warmup += ops_per_request;
                }
            }
            if c.paused_for(now).is_some() {
                paused += step;
                continue;
            }
            while in_flight.len() < c.limit() && c.hold(now, in_flight.len()).is_none() {
                let epoch = c.epoch();
                match dataverse.admit("sink", now) {
                    Ok(admission) => {
                        c.started(now);
                        in_flight.push((now, admission));
                    }
                    Err(throttle) => {
                        throttles += 1;
                        c.throttled(now, Duration::from_secs(throttle.retry_after_secs), epoch);
                        break;
                    }
                }
            }
        }
        let ceiling = 40.0 / 10.0 / 0.030;
        let rate = ops_after_warmup as f64 / 100.0;
        assert!(ops > 0);
        assert!(
            rate >= 0.9 * ceiling,
            "{rate:.0} operations/s after the first window, ceiling {ceiling:.0} ({throttles} 429s)"
        );
        assert!(
            paused < Duration::from_secs(6),
            "paused by 429s for {paused:?} of 120 s ({throttles} 429s)"
        );
    }

    #[test]
    fn the_budget_caps_concurrency_and_holds_requests_it_cannot_afford() {
        let now = Instant::now();
        let mut c = Controller::new(8, 20).with_window(Duration::from_secs(300));
        assert!(c.remaining(Some(6000), Some(1_200_000.0)));
        assert_eq!(c.limit(), 4, "1,200 s of execution per 300 s window: 4 in flight");
        // The sink itself spent 1,100 s in the window; requests take 20 s.
        for i in 0..55 {
            c.finished(now + Duration::from_secs(i), Duration::from_secs(20));
        }
        let now = now + Duration::from_secs(60);
        assert_eq!(c.hold(now, 0), None, "1,100 s + 20 s fits in 97 % of 1,200 s");
        let wait = c.hold(now, 3).expect("1,100 s + 4 × 20 s does not");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(300),
            "held until enough leaves the window ({wait:?})"
        );
        assert_eq!(c.hold(now + wait, 3), None, "and then let go");
        // Another client of the same user spent the budget: what Dataverse reports counts.
        let mut shared = Controller::new(8, 20).with_window(Duration::from_secs(300));
        shared.remaining(Some(6000), Some(1_200_000.0));
        shared.finished(now, Duration::from_secs(1));
        shared.remaining(Some(5000), Some(10_000.0));
        assert!(shared.hold(now, 0).is_some());
    }

    #[test]
    fn few_requests_left_space_the_starts() {
        let mut c = Controller::new(8, 20).with_window(Duration::from_secs(300));
        let now = Instant::now();
        c.remaining(Some(6000), None);
        c.remaining(Some(100), None);
        assert!(c.braked());
        assert_eq!(c.hold(now, 0), None);
        c.started(now);
        assert_eq!(c.hold(now, 0), Some(Duration::from_millis(50)), "300 s / 6000");
        c.started(now);
        assert_eq!(c.hold(now, 0), Some(Duration::from_millis(100)));
        c.remaining(Some(3000), None);
        assert_eq!(c.hold(now, 0), None, "released");
    }
}
