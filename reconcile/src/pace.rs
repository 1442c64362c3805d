//! A request pacer: at most `rate` request starts per second, shared by every caller of one
//! side (Stripe or Dataverse), so a reconciliation stays well inside the budget the running
//! pipeline shares with it. Throttling answers (429) are handled on top of this by each side.

use std::time::Duration;

use tokio::{sync::Mutex, time::Instant};

/// Spaces request starts `1/rate` seconds apart.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    /// The earliest start of the next request.
    next: Mutex<Instant>,
}

impl Pacer {
    /// `rate` requests per second; 0 or less means unpaced.
    pub fn new(rate: f64) -> Self {
        let interval = if rate > 0.0 {
            Duration::from_secs_f64(1.0 / rate)
        } else {
            Duration::ZERO
        };
        Pacer {
            interval,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this caller's turn.
    pub async fn wait(&self) {
        let start = {
            let mut next = self.next.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + self.interval;
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn starts_are_spaced_by_the_rate() {
        let pacer = Pacer::new(4.0);
        let begun = Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        assert_eq!(
            begun.elapsed(),
            Duration::from_millis(1000),
            "5 starts at 4/s span 1 s"
        );

        let unpaced = Pacer::new(0.0);
        let begun = Instant::now();
        for _ in 0..100 {
            unpaced.wait().await;
        }
        assert_eq!(begun.elapsed(), Duration::ZERO);
    }
}
