//! What the gateway's load generator and its baseline producer share: the event they send or
//! write, and the latency report both print (an HDR histogram, then one machine-readable line
//! that `scripts/bench.sh` builds its table from).

use std::time::Duration;

use hdrhistogram::Histogram;

/// Unix seconds every generated event starts from; a customer's later events are later seconds.
pub const EPOCH: i64 = 1_700_000_000;

/// The signed `customer.updated` body of event `n` (about 0.7 KB). `round` is how many events of
/// this customer came before it: each round is one second later, so the sink's staleness guard
/// sees every round as newer than the last.
pub fn event(id: &str, customer: &str, n: usize, round: usize) -> String {
    let created = EPOCH + round as i64;
    format!(
        r#"{{
  "id": "{id}",
  "object": "event",
  "api_version": "2025-04-30.basil",
  "created": {created},
  "data": {{
    "object": {{
      "id": "{customer}",
      "object": "customer",
      "address": {{"city": "Berlin", "country": "DE", "line1": "Street {n}", "line2": null, "postal_code": "10115", "state": null}},
      "description": null,
      "email": "customer{n}@example.com",
      "metadata": {{"order": "{n}"}},
      "name": "Customer {n}",
      "phone": "+4930123456",
      "preferred_locales": ["de"]
    }},
    "previous_attributes": {{"email": null}}
  }},
  "livemode": false,
  "pending_webhooks": 1,
  "request": {{"id": null, "idempotency_key": null}},
  "type": "customer.updated"
}}"#
    )
}

/// A latency histogram in microseconds, from 1 µs to 10 minutes at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("the bounds are valid")
}

/// Records `d` (clamped into the histogram's range).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// `p50 … max` in milliseconds, as a JSON object.
pub fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |v: u64| (v as f64 / 1000.0 * 100.0).round() / 100.0;
    if h.is_empty() {
        return serde_json::json!({"p50": null, "p90": null, "p99": null, "p99_9": null, "max": null});
    }
    serde_json::json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p99_9": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

/// The human line for a histogram.
pub fn latency_line(label: &str, h: &Histogram<u64>) -> String {
    let p = percentiles(h);
    let f = |k: &str| p[k].as_f64().map_or("-".into(), |v| format!("{v:.2}"));
    format!(
        "{label:<12} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        f("p50"),
        f("p90"),
        f("p99"),
        f("p99_9"),
        f("max")
    )
}

/// The final machine-readable line: `BENCH {json}`.
pub fn print_machine_line(value: &serde_json::Value) {
    println!("BENCH {value}");
}
