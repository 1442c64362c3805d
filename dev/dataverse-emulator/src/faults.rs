//! Fault injection: error answers, dropped connections, added latency and forced throttle windows,
//! set from the configuration at start-up and replaced at run time through `POST /_admin/faults`.

use std::time::Duration;

use http::StatusCode;
use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::{FaultConfig, ThrottleKind};
use crate::limits::Throttle;

/// What to do with a request before processing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Process it.
    Proceed,
    /// Close the connection without answering.
    Drop,
    /// Answer with this error status.
    Fail(StatusCode),
}

/// The active faults.
#[derive(Debug)]
pub struct Faults {
    config: FaultConfig,
    /// End of the forced throttle window, if one is active.
    forced: Option<(Instant, ThrottleKind)>,
}

/// The active faults as the admin API shows them.
#[derive(Debug, Serialize)]
pub struct FaultsView {
    /// The fault settings, with `fail_next`/`drop_next` counting down as they are used.
    #[serde(flatten)]
    pub config: FaultConfig,
    /// Milliseconds left of the forced throttle window.
    pub force_throttle_remaining_ms: Option<u64>,
}

impl Faults {
    /// Faults as configured, with any forced throttle window starting `now`.
    pub fn new(config: FaultConfig, now: Instant) -> Self {
        let mut faults = Self {
            config: FaultConfig::default(),
            forced: None,
        };
        faults.set(config, now);
        faults
    }

    /// Replaces every fault setting.
    pub fn set(&mut self, config: FaultConfig, now: Instant) {
        self.forced = config
            .force_throttle
            .as_ref()
            .map(|f| (now + Duration::from_millis(f.duration_ms), f.kind));
        self.config = config;
    }

    /// The active settings.
    pub fn view(&self, now: Instant) -> FaultsView {
        FaultsView {
            config: self.config.clone(),
            force_throttle_remaining_ms: self
                .forced
                .filter(|(until, _)| *until > now)
                .map(|(until, _)| (until - now).as_millis() as u64),
        }
    }

    /// The forced throttle answer, while its window lasts.
    pub fn forced_throttle(&self, now: Instant) -> Option<Throttle> {
        let (until, kind) = self.forced?;
        (until > now).then(|| Throttle {
            kind,
            retry_after_secs: ((until - now).as_millis().div_ceil(1000) as u64).max(1),
        })
    }

    /// Decides the fate of one request, consuming `drop_next`/`fail_next` first.
    pub fn decide(&mut self) -> Decision {
        let mut rng = rand::rng();
        if self.config.drop_next > 0 {
            self.config.drop_next -= 1;
            return Decision::Drop;
        }
        if self.config.fail_next > 0 {
            self.config.fail_next -= 1;
            return Decision::Fail(self.pick_status(&mut rng));
        }
        if self.config.drop_rate > 0.0 && rng.random_bool(self.config.drop_rate.clamp(0.0, 1.0)) {
            return Decision::Drop;
        }
        if self.config.error_rate > 0.0 && rng.random_bool(self.config.error_rate.clamp(0.0, 1.0)) {
            return Decision::Fail(self.pick_status(&mut rng));
        }
        Decision::Proceed
    }

    /// Whether to drop the connection of a request that has been processed.
    pub fn drop_after_apply(&self) -> bool {
        let rate = self.config.drop_after_apply_rate.clamp(0.0, 1.0);
        rate > 0.0 && rand::rng().random_bool(rate)
    }

    /// Latency added to every request.
    pub fn added_latency(&self) -> Duration {
        Duration::from_millis(self.config.added_latency_ms)
    }

    fn pick_status(&self, rng: &mut impl Rng) -> StatusCode {
        let statuses = &self.config.error_statuses;
        let status = if statuses.is_empty() {
            503
        } else {
            statuses[rng.random_range(0..statuses.len())]
        };
        StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ForceThrottle;

    #[test]
    fn counted_faults_run_out() {
        let config = FaultConfig {
            fail_next: 2,
            drop_next: 1,
            error_statuses: vec![503],
            ..FaultConfig::default()
        };
        let mut faults = Faults::new(config, Instant::now());
        assert_eq!(faults.decide(), Decision::Drop);
        assert_eq!(faults.decide(), Decision::Fail(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(faults.decide(), Decision::Fail(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(faults.decide(), Decision::Proceed);
    }

    #[test]
    fn rates_of_one_and_zero_are_deterministic() {
        let now = Instant::now();
        let mut always = Faults::new(
            FaultConfig {
                error_rate: 1.0,
                ..FaultConfig::default()
            },
            now,
        );
        for _ in 0..20 {
            assert!(matches!(always.decide(), Decision::Fail(s) if s == 500 || s == 503));
        }
        let mut never = Faults::new(FaultConfig::default(), now);
        assert!((0..20).all(|_| never.decide() == Decision::Proceed));
        assert!(!never.drop_after_apply());
    }

    #[test]
    fn forced_throttle_window_ends() {
        let now = Instant::now();
        let config = FaultConfig {
            force_throttle: Some(ForceThrottle {
                duration_ms: 2500,
                kind: ThrottleKind::ExecutionTime,
            }),
            ..FaultConfig::default()
        };
        let faults = Faults::new(config, now);
        assert_eq!(
            faults.forced_throttle(now),
            Some(Throttle {
                kind: ThrottleKind::ExecutionTime,
                retry_after_secs: 3
            })
        );
        assert_eq!(faults.forced_throttle(now + Duration::from_millis(2500)), None);
    }
}
