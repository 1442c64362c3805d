//! What keeps a stage from making progress, for `/readyz` and the logs. Anything that retries
//! (a retry loop, a producer being replaced, a stalled partition) holds a [`Failing`] guard while
//! it fails; a problem that has lasted longer than the stage's `stall_after` turns readiness red
//! and names the reason. Short blips (one retry) never flap the probe.

use std::{
    collections::BTreeMap,
    fmt::Display,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The problems of one stage. Cheap to clone; clones share the set.
#[derive(Clone, Default)]
pub struct Health {
    problems: Arc<Mutex<BTreeMap<String, Problem>>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("problems", &self.lock().len())
            .finish()
    }
}

#[derive(Debug)]
struct Problem {
    /// Guards holding this key: several partitions can retry the same step at once.
    holders: usize,
    since: Instant,
    message: String,
}

/// Held while something fails; dropping it (after a success, or when the work is given up)
/// clears the problem once no other holder of the same key is left.
#[must_use = "the problem is cleared when the guard is dropped"]
#[derive(Debug)]
pub struct Failing {
    health: Health,
    key: String,
}

impl Failing {
    /// Replaces the problem's description (the latest error), keeping when it began.
    pub fn update(&self, message: impl Display) {
        if let Some(p) = self.health.lock().get_mut(&self.key) {
            p.message = message.to_string();
        }
    }
}

impl Drop for Failing {
    fn drop(&mut self) {
        let mut problems = self.health.lock();
        if let Some(p) = problems.get_mut(&self.key) {
            p.holders -= 1;
            if p.holders == 0 {
                problems.remove(&self.key);
            }
        }
    }
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Problem>> {
        // Plain bookkeeping behind it; a panic elsewhere leaves it usable.
        self.problems
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reports that `key` (a short name of the step: `producing to customers.normalized`) fails
    /// with `message`. The problem lasts until every guard of that key is dropped.
    pub fn failing(&self, key: impl Into<String>, message: impl Display) -> Failing {
        let key = key.into();
        let mut problems = self.lock();
        let p = problems.entry(key.clone()).or_insert_with(|| Problem {
            holders: 0,
            since: Instant::now(),
            message: String::new(),
        });
        p.holders += 1;
        p.message = message.to_string();
        Failing {
            health: self.clone(),
            key,
        }
    }

    /// Problems that have lasted at least `after`, as `"<key>: <message> (for 42s)"`, oldest first.
    pub fn lasting(&self, after: Duration) -> Vec<String> {
        let now = Instant::now();
        let mut out: Vec<(Instant, String)> = self
            .lock()
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) >= after)
            .map(|(key, p)| {
                let age = now.duration_since(p.since).as_secs();
                (p.since, format!("{key}: {} (for {age}s)", p.message))
            })
            .collect();
        out.sort();
        out.into_iter().map(|(_, text)| text).collect()
    }

    /// `Err` naming every problem that has lasted at least `after`: the readiness verdict.
    pub fn verdict(&self, after: Duration) -> Result<(), String> {
        let lasting = self.lasting(after);
        if lasting.is_empty() {
            Ok(())
        } else {
            Err(lasting.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_lasts_until_its_last_holder_is_gone() {
        let health = Health::new();
        assert_eq!(health.verdict(Duration::ZERO), Ok(()));
        let a = health.failing("writing", "503");
        let b = health.failing("writing", "timeout");
        a.update("connection refused");
        let verdict = health.verdict(Duration::ZERO).unwrap_err();
        assert!(
            verdict.starts_with("writing: connection refused (for "),
            "{verdict}"
        );
        drop(a);
        assert!(health.verdict(Duration::ZERO).is_err(), "b still fails");
        drop(b);
        assert_eq!(health.verdict(Duration::ZERO), Ok(()));
    }

    #[test]
    fn only_lasting_problems_count() {
        let health = Health::new();
        let _p = health.failing("registry", "unavailable");
        assert_eq!(health.verdict(Duration::from_secs(3600)), Ok(()));
        assert_eq!(health.lasting(Duration::ZERO).len(), 1);
    }
}
