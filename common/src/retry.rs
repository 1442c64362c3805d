//! Retrying what must not be dropped (broker or registry unavailable, throttling, 5xx): capped
//! exponential backoff with jitter ([`Backoff`]), its settings ([`BackoffSettings`], the `backoff`
//! section of every stage) and the one retry loop every stage uses ([`until_cancelled`]), where
//! the caller's classification decides between retrying and giving up.

use std::{fmt::Display, future::Future, time::Duration};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{ConfigError, HumanDuration},
    health::Health,
};

/// Retry delays for transient failures: the `backoff` section of every stage's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffSettings {
    /// First delay. Default `100ms`.
    pub initial: HumanDuration,
    /// Longest delay. Default `30s`.
    pub max: HumanDuration,
}

impl Default for BackoffSettings {
    fn default() -> Self {
        BackoffSettings {
            initial: HumanDuration::millis(100),
            max: HumanDuration::secs(30),
        }
    }
}

impl BackoffSettings {
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.initial.into(), self.max.into())
    }

    /// Rejects bounds that cannot work; `section` names them in the error.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.initial.0.is_zero() {
            return Err(ConfigError::invalid(
                format!("{section}.initial"),
                "must be longer than 0",
            ));
        }
        if self.max < self.initial {
            return Err(ConfigError::invalid(
                format!("{section}.max"),
                format!("must be at least {section}.initial"),
            ));
        }
        Ok(())
    }
}

/// What a failed attempt means, as the caller classifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<E> {
    /// Transient: wait the next backoff delay, then try again.
    Retry(E),
    /// Transient, and the wait already happened elsewhere (every writer observes a throttling
    /// pause before its next request): try again at once.
    RetryNow(E),
    /// Would fail again: stop and hand the error back (typically to the dead-letter topic).
    GiveUp(E),
}

/// Why [`until_cancelled`] stopped without a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped<E> {
    /// `cancel` fired first (shutdown, partition revoked).
    Cancelled,
    /// The caller classified a failure as permanent after `attempts` attempts.
    GaveUp { error: E, attempts: u32 },
}

/// What [`until_cancelled`] retries and how.
#[derive(Debug)]
pub struct Retry<'a> {
    /// Names the step in logs and readiness: `creating topics`, `producing to customers.normalized`.
    pub what: &'a str,
    pub backoff: Backoff,
    pub cancel: &'a CancellationToken,
    /// Where a lasting failure is reported, so `/readyz` can say why the stage is stuck.
    pub health: Option<&'a Health>,
}

/// Runs `op` (given the attempt number, from 1) until it succeeds, the caller gives up, or
/// `cancel` fires; transient failures are retried with capped, jittered backoff and never
/// skipped. An attempt in progress is dropped when `cancel` fires. The first failure and every
/// tenth are logged as warnings, the rest at debug, each with the error and the next delay.
pub async fn until_cancelled<T, E, F, Fut>(retry: Retry<'_>, mut op: F) -> Result<T, Stopped<E>>
where
    E: Display,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Verdict<E>>>,
{
    let Retry {
        what,
        mut backoff,
        cancel,
        health,
    } = retry;
    let mut failing = None;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let outcome = tokio::select! {
            r = op(attempt) => r,
            () = cancel.cancelled() => return Err(Stopped::Cancelled),
        };
        let (error, delay) = match outcome {
            Ok(value) => {
                if attempt > 1 {
                    tracing::info!(attempts = attempt, "{what} succeeded after retrying");
                }
                return Ok(value);
            }
            Err(Verdict::GiveUp(error)) => {
                return Err(Stopped::GaveUp {
                    error,
                    attempts: attempt,
                });
            }
            Err(Verdict::Retry(error)) => {
                let delay = backoff.next_delay();
                (error, delay)
            }
            Err(Verdict::RetryNow(error)) => (error, Duration::ZERO),
        };
        if let Some(health) = health {
            match &failing {
                None => failing = Some(health.failing(what, &error)),
                Some(f) => f.update(&error),
            }
        }
        if attempt == 1 || attempt.is_multiple_of(10) {
            tracing::warn!(attempt, error = %error, retry_in = ?delay, "{what} failed; retrying");
        } else {
            tracing::debug!(attempt, error = %error, retry_in = ?delay, "{what} failed; retrying");
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => return Err(Stopped::Cancelled),
        }
    }
}

/// Delays grow `initial · 2^attempt` up to `max`; each delay is drawn from the upper half of that
/// ceiling ("equal jitter"), so retries spread out without ever collapsing to zero.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The number of delays handed out since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay to wait before retrying.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + rand::rng().random_range(Duration::ZERO..=ceiling - half)
    }

    /// Call after a success so the next failure starts small again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick<'a>(what: &'a str, cancel: &'a CancellationToken, health: Option<&'a Health>) -> Retry<'a> {
        Retry {
            what,
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
            cancel,
            health,
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let cancel = CancellationToken::new();
        let health = Health::new();
        let calls = AtomicU32::new(0);
        let seen_unhealthy = AtomicU32::new(0);
        let value = until_cancelled(quick("step", &cancel, Some(&health)), |attempt| {
            calls.fetch_add(1, Ordering::SeqCst);
            if health.verdict(Duration::ZERO).is_err() {
                seen_unhealthy.fetch_add(1, Ordering::SeqCst);
            }
            async move {
                match attempt {
                    1 => Err(Verdict::Retry("down")),
                    2 => Err(Verdict::RetryNow("throttled")),
                    _ => Ok(attempt),
                }
            }
        })
        .await;
        assert_eq!(value, Ok(3));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(seen_unhealthy.load(Ordering::SeqCst), 2, "reported while failing");
        assert_eq!(
            health.verdict(Duration::ZERO),
            Ok(()),
            "cleared after the success"
        );
    }

    #[tokio::test]
    async fn a_permanent_failure_stops_with_the_attempt_count() {
        let cancel = CancellationToken::new();
        let result: Result<(), _> = until_cancelled(quick("step", &cancel, None), |attempt| async move {
            if attempt < 3 {
                Err(Verdict::Retry("flaky"))
            } else {
                Err(Verdict::GiveUp("refused"))
            }
        })
        .await;
        assert_eq!(
            result,
            Err(Stopped::GaveUp {
                error: "refused",
                attempts: 3
            })
        );
    }

    #[tokio::test]
    async fn cancellation_ends_an_endless_outage_and_an_attempt_in_progress() {
        let cancel = CancellationToken::new();
        let canceller = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                cancel.cancel();
            })
        };
        let result: Result<(), Stopped<&str>> = until_cancelled(quick("step", &cancel, None), |_| async {
            Err(Verdict::Retry("down"))
        })
        .await;
        assert_eq!(result, Err(Stopped::Cancelled));
        canceller.await.unwrap();

        let result: Result<(), Stopped<&str>> =
            until_cancelled(quick("step", &cancel, None), |_| std::future::pending()).await;
        assert_eq!(result, Err(Stopped::Cancelled), "a hanging attempt is dropped");
    }

    #[test]
    fn settings_are_validated() {
        let mut s = BackoffSettings::default();
        assert!(s.validate("backoff").is_ok());
        s.initial = HumanDuration::millis(0);
        assert!(
            s.validate("backoff")
                .unwrap_err()
                .to_string()
                .contains("backoff.initial")
        );
        s.initial = HumanDuration::secs(5);
        s.max = HumanDuration::secs(1);
        assert!(
            s.validate("backoff")
                .unwrap_err()
                .to_string()
                .contains("backoff.max")
        );
    }

    #[test]
    fn delays_grow_within_bounds_and_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut last_ceiling = Duration::ZERO;
        for _ in 0..40 {
            let ceiling = b.ceiling();
            assert!(ceiling >= last_ceiling && ceiling <= Duration::from_secs(2));
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            last_ceiling = ceiling;
        }
        assert_eq!(b.ceiling(), Duration::from_secs(2));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        assert_eq!(b.attempts(), 0);
    }
}
