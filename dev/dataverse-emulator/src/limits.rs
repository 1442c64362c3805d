//! Service protection limits, per client id: requests and combined execution time over a sliding window,
//! and requests in flight. A client over a limit gets 429 with `Retry-After`; every request it sends while
//! throttled pushes the end of its wait further out (by `penalty_ms`), as Dataverse does to clients that
//! keep pushing. Pure state driven by the caller's clock, so tests can reason about it exactly.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::config::{LimitsConfig, ThrottleKind};

/// Why a request was refused and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    /// Which limit.
    pub kind: ThrottleKind,
    /// Seconds to wait, at least 1.
    pub retry_after_secs: u64,
}

/// What is left of a client's budget after a request was admitted (sent as
/// `x-ms-ratelimit-*-remaining-xrm-requests` headers, as Dataverse does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Requests left in the window.
    pub remaining_requests: u64,
    /// Execution time left in the window, in milliseconds.
    pub remaining_execution_ms: u64,
}

#[derive(Debug, Default)]
struct ClientWindow {
    /// When each request in the window was admitted.
    starts: VecDeque<Instant>,
    /// When each finished request in the window finished, and how long it ran.
    finishes: VecDeque<(Instant, Duration)>,
    /// Sum of the durations in `finishes`.
    execution: Duration,
    /// Requests admitted and not finished.
    in_flight: u64,
    /// Throttled until this instant for this limit (requests or execution time).
    blocked: Option<(Instant, ThrottleKind)>,
    /// Concurrency refusals since the last admitted request; each adds `penalty_ms` to the next wait.
    concurrency_strikes: u32,
}

/// A client's usage, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    /// Requests admitted in the window.
    pub requests_in_window: usize,
    /// Execution time of finished requests in the window, in milliseconds.
    pub execution_ms_in_window: u64,
    /// Requests in flight.
    pub in_flight: u64,
    /// Milliseconds until the client may send again, when throttled.
    pub throttled_for_ms: Option<u64>,
}

/// The limits' state for every client.
#[derive(Debug)]
pub struct Limiter {
    config: LimitsConfig,
    clients: HashMap<String, ClientWindow>,
}

fn ceil_secs(duration: Duration) -> u64 {
    (duration.as_millis().div_ceil(1000) as u64).max(1)
}

impl Limiter {
    /// A limiter with no history.
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            config,
            clients: HashMap::new(),
        }
    }

    fn window(&self) -> Duration {
        Duration::from_millis(self.config.window_ms)
    }

    fn penalty(&self) -> Duration {
        Duration::from_millis(self.config.penalty_ms)
    }

    fn max_wait(&self) -> Duration {
        Duration::from_secs(self.config.max_retry_after_secs)
    }

    /// Admits a request or says which limit refuses it.
    pub fn admit(&mut self, client: &str, now: Instant) -> Result<Admission, Throttle> {
        let (window, penalty, max_wait) = (self.window(), self.penalty(), self.max_wait());
        let config = self.config.clone();
        let state = self.clients.entry(client.to_owned()).or_default();
        prune(state, now, window);
        if !config.enabled {
            state.starts.push_back(now);
            state.in_flight += 1;
            return Ok(Admission {
                remaining_requests: u64::MAX,
                remaining_execution_ms: u64::MAX,
            });
        }
        if let Some((until, kind)) = state.blocked {
            if now < until {
                let until = (until + penalty).min(now + max_wait);
                state.blocked = Some((until, kind));
                return Err(Throttle {
                    kind,
                    retry_after_secs: ceil_secs(until - now),
                });
            }
            state.blocked = None;
        }
        if state.in_flight >= config.max_concurrent {
            state.concurrency_strikes = state.concurrency_strikes.saturating_add(1);
            let wait = (penalty * state.concurrency_strikes).min(max_wait);
            return Err(Throttle {
                kind: ThrottleKind::Concurrency,
                retry_after_secs: ceil_secs(wait),
            });
        }
        let max_requests = usize::try_from(config.max_requests).unwrap_or(usize::MAX);
        if state.starts.len() >= max_requests {
            // The window frees a slot when the oldest request beyond the limit leaves it.
            let oldest = state.starts[state.starts.len() - max_requests];
            let until = (oldest + window)
                .max(now + Duration::from_millis(1))
                .min(now + max_wait);
            state.blocked = Some((until, ThrottleKind::Requests));
            return Err(Throttle {
                kind: ThrottleKind::Requests,
                retry_after_secs: ceil_secs(until - now),
            });
        }
        let max_execution = Duration::from_millis(config.max_execution_time_ms);
        if state.execution >= max_execution {
            // Wait until enough finished requests leave the window to bring the sum under the limit.
            let mut sum = state.execution;
            let mut until = now;
            for (finished, took) in &state.finishes {
                sum = sum.saturating_sub(*took);
                until = *finished + window;
                if sum < max_execution {
                    break;
                }
            }
            let until = until.max(now + Duration::from_millis(1)).min(now + max_wait);
            state.blocked = Some((until, ThrottleKind::ExecutionTime));
            return Err(Throttle {
                kind: ThrottleKind::ExecutionTime,
                retry_after_secs: ceil_secs(until - now),
            });
        }
        state.starts.push_back(now);
        state.in_flight += 1;
        state.concurrency_strikes = 0;
        Ok(Admission {
            remaining_requests: config.max_requests.saturating_sub(state.starts.len() as u64),
            remaining_execution_ms: (max_execution.saturating_sub(state.execution)).as_millis() as u64,
        })
    }

    /// Records the end of an admitted request.
    pub fn finish(&mut self, client: &str, started: Instant, now: Instant) {
        let window = self.window();
        if let Some(state) = self.clients.get_mut(client) {
            state.in_flight = state.in_flight.saturating_sub(1);
            let took = now.saturating_duration_since(started);
            state.finishes.push_back((now, took));
            state.execution += took;
            prune(state, now, window);
        }
    }

    /// Forgets all history.
    pub fn reset(&mut self) {
        // Requests in flight keep their slots: their guards will still call `finish`.
        for state in self.clients.values_mut() {
            let in_flight = state.in_flight;
            *state = ClientWindow {
                in_flight,
                ..ClientWindow::default()
            };
        }
    }

    /// Usage per client.
    pub fn usage(&mut self, now: Instant) -> BTreeMap<String, Usage> {
        let window = self.window();
        self.clients
            .iter_mut()
            .map(|(client, state)| {
                prune(state, now, window);
                let throttled_for_ms = state
                    .blocked
                    .filter(|(until, _)| *until > now)
                    .map(|(until, _)| (until - now).as_millis() as u64);
                (
                    client.clone(),
                    Usage {
                        requests_in_window: state.starts.len(),
                        execution_ms_in_window: state.execution.as_millis() as u64,
                        in_flight: state.in_flight,
                        throttled_for_ms,
                    },
                )
            })
            .collect()
    }

    /// The documented message for a limit, with the configured numbers.
    pub fn message(&self, kind: ThrottleKind) -> String {
        let window = if self.config.window_ms.is_multiple_of(1000) {
            (self.config.window_ms / 1000).to_string()
        } else {
            format!("{}", self.config.window_ms as f64 / 1000.0)
        };
        match kind {
            ThrottleKind::Requests => format!(
                "Number of requests exceeded the limit of {} over time window of {window} seconds.",
                self.config.max_requests
            ),
            ThrottleKind::ExecutionTime => format!(
                "Combined execution time of incoming requests exceeded limit of {} milliseconds over time window of {window} seconds. Decrease number of concurrent requests or reduce the duration of requests and try again later.",
                self.config.max_execution_time_ms
            ),
            ThrottleKind::Concurrency => {
                format!(
                    "Number of concurrent requests exceeded the limit of {}.",
                    self.config.max_concurrent
                )
            }
        }
    }
}

fn prune(state: &mut ClientWindow, now: Instant, window: Duration) {
    while state
        .starts
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        state.starts.pop_front();
    }
    while let Some((finished, took)) = state.finishes.front().copied() {
        if now.saturating_duration_since(finished) < window {
            break;
        }
        state.execution = state.execution.saturating_sub(took);
        state.finishes.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max_requests: u64, max_execution_time_ms: u64, max_concurrent: u64) -> Limiter {
        Limiter::new(LimitsConfig {
            window_ms: 10_000,
            max_requests,
            max_execution_time_ms,
            max_concurrent,
            penalty_ms: 1000,
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn request_count_slides_and_grows_while_pushed() {
        let mut l = limiter(3, 1_000_000, 100);
        let t0 = Instant::now();
        for i in 0..3 {
            let now = t0 + Duration::from_millis(i * 1000);
            l.admit("c", now).expect("admitted");
            l.finish("c", now, now);
        }
        let refused = l.admit("c", t0 + Duration::from_millis(3000)).expect_err("over");
        assert_eq!(
            refused,
            Throttle {
                kind: ThrottleKind::Requests,
                retry_after_secs: 7
            }
        );
        let again = l.admit("c", t0 + Duration::from_millis(3100)).expect_err("still");
        assert_eq!(
            again.retry_after_secs, 8,
            "pushing while throttled lengthens the wait"
        );
        let third = l.admit("c", t0 + Duration::from_millis(3200)).expect_err("still");
        assert_eq!(third.retry_after_secs, 9);
        assert!(
            l.admit("c", t0 + Duration::from_millis(12_000)).is_ok(),
            "wait over: admitted again"
        );
        assert!(
            l.admit("other", t0 + Duration::from_millis(3000)).is_ok(),
            "limits are per client"
        );
    }

    #[test]
    fn execution_time_counts_finished_requests() {
        let mut l = limiter(1000, 500, 100);
        let t0 = Instant::now();
        l.admit("c", t0).expect("1");
        l.finish("c", t0, t0 + Duration::from_millis(300));
        l.admit("c", t0 + Duration::from_millis(300)).expect("2");
        l.finish(
            "c",
            t0 + Duration::from_millis(300),
            t0 + Duration::from_millis(600),
        );
        let refused = l.admit("c", t0 + Duration::from_millis(600)).expect_err("over");
        assert_eq!(refused.kind, ThrottleKind::ExecutionTime);
        // The first request leaves the window at 0.3 s + 10 s.
        assert_eq!(refused.retry_after_secs, 10);
        let again = l.admit("c", t0 + Duration::from_millis(700)).expect_err("still");
        assert!(again.retry_after_secs > refused.retry_after_secs);
    }

    #[test]
    fn concurrency_is_immediate_and_grows_while_pushed() {
        let mut l = limiter(1000, 1_000_000, 2);
        let t0 = Instant::now();
        l.admit("c", t0).expect("1");
        l.admit("c", t0).expect("2");
        let waits: Vec<u64> = (0..3)
            .map(|_| l.admit("c", t0).expect_err("over"))
            .inspect(|t| assert_eq!(t.kind, ThrottleKind::Concurrency))
            .map(|t| t.retry_after_secs)
            .collect();
        assert_eq!(waits, [1, 2, 3]);
        l.finish("c", t0, t0 + Duration::from_millis(5));
        assert!(l.admit("c", t0 + Duration::from_millis(5)).is_ok());
    }

    #[test]
    fn messages_carry_the_documented_codes_and_numbers() {
        let l = Limiter::new(LimitsConfig::default());
        assert_eq!(
            l.message(ThrottleKind::Requests),
            "Number of requests exceeded the limit of 6000 over time window of 300 seconds."
        );
        assert!(
            l.message(ThrottleKind::ExecutionTime)
                .contains("1200000 milliseconds")
        );
        assert_eq!(
            l.message(ThrottleKind::Concurrency),
            "Number of concurrent requests exceeded the limit of 52."
        );
        assert_eq!(ThrottleKind::Concurrency.code(), "0x80072326");
    }
}
