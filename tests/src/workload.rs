//! Customer histories as Stripe produces and delivers them, the Dataverse state they must end in,
//! and a sender that delivers them the way Stripe does.
//!
//! * [`generate`] — customers created, updated several times and some deleted, with messy field
//!   values whose normalised form is known (from `enricher/NORMALIZATION.md`), changes of one
//!   customer often sharing a second, delivered out of order and some twice.
//! * [`Expected`] — the model: the greatest change by (event time, `created` < `updated` <
//!   `deleted`) wins, a delete is final, a redelivery changes nothing. Two updates of one customer
//!   never share a second here: their order cannot be known from the events (the sink applies
//!   them in partition order and counts them), so an exact expected state needs distinct seconds.
//! * [`Sender`] — POSTs every delivery, signed at send time, from several concurrent workers, and
//!   retries each until it gets a 2xx, as Stripe retries a delivery that got no 2xx.
//! * [`compare`] — every difference between Dataverse's contacts and the model.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

use crate::pipeline::{customer_event, stripe_signature};

/// One webhook delivery: the event's id and the body Stripe posts.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event_id: String,
    pub customer_id: String,
    pub body: String,
}

/// The contact a customer must end as.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub deleted: bool,
    /// The winning change's event time (`new_stripeeventcreated`).
    pub time: i64,
    pub email: String,
    pub firstname: Option<String>,
    pub lastname: String,
    pub phone: Option<String>,
}

/// The shape of a generated workload.
#[derive(Debug, Clone)]
pub struct Spec {
    /// At least this many distinct events.
    pub events: usize,
    /// Updates per customer, drawn uniformly.
    pub updates: std::ops::RangeInclusive<usize>,
    /// Share of customers deleted at the end of their history.
    pub delete_ratio: f64,
    /// Share of changes in the same second as the change before them (an update in the creation's
    /// second, a delete in the last update's second).
    pub same_second_ratio: f64,
    /// Share of events delivered twice.
    pub duplicate_ratio: f64,
    /// How far (in deliveries) an event may be moved from its place in time order.
    pub shuffle_window: usize,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            events: 2_000,
            updates: 1..=5,
            delete_ratio: 0.3,
            same_second_ratio: 0.3,
            duplicate_ratio: 0.05,
            shuffle_window: 40,
        }
    }
}

/// Deliveries in the order Stripe makes them, and the state they must end in.
#[derive(Debug, Clone)]
pub struct Workload {
    pub seed: u64,
    /// Distinct events.
    pub events: usize,
    pub deliveries: Vec<Delivery>,
    pub expected: BTreeMap<String, Expected>,
}

/// The seed: `WORKLOAD_SEED` when set (to replay a failure), else random. Printed in every
/// scenario's summary.
pub fn seed() -> u64 {
    std::env::var("WORKLOAD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

// Messy values and what normalisation makes of them (enricher/NORMALIZATION.md).
const NAMES: &[(&str, Option<&str>, &str)] = &[
    ("  Mary   Ann  Smith ", Some("Mary Ann"), "Smith"),
    ("Ludwig van Beethoven", Some("Ludwig"), "van Beethoven"),
    ("Smith, John", Some("John"), "Smith"),
    ("Cher", None, "Cher"),
    ("Martin Luther King Jr.", Some("Martin Luther"), "King Jr."),
    ("Иван Петров", Some("Иван"), "Петров"),
    ("José María García", Some("José María"), "García"),
];
const PHONES: &[(Option<&str>, &str, Option<&str>)] = &[
    (Some("(415) 555-2671"), "us", Some("+14155552671")),
    (Some("020 7946 0958"), "GB", Some("+442079460958")),
    (Some("06 12 34 56 78"), " fr ", Some("+33612345678")),
    (Some("+44 (0) 20 7946 0958"), "US", Some("+442079460958")),
    (None, "us", None),
    (Some("  "), "GB", None),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Created,
    Updated,
    Deleted,
}

impl Kind {
    fn event_type(self) -> &'static str {
        match self {
            Kind::Created => "customer.created",
            Kind::Updated => "customer.updated",
            Kind::Deleted => "customer.deleted",
        }
    }
}

struct Change {
    time: i64,
    kind: Kind,
    delivery: Delivery,
    state: Expected,
}

/// Generates a workload; customer and event ids start with `prefix`. Event times lie in the week
/// before now.
pub fn generate(prefix: &str, spec: &Spec, seed: u64) -> Workload {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64;
    generate_at(prefix, spec, seed, now)
}

/// [`generate`] as of `now` (unix seconds): the same prefix, spec, seed and `now` give the same
/// workload.
pub fn generate_at(prefix: &str, spec: &Spec, seed: u64, now: i64) -> Workload {
    let mut rng = StdRng::seed_from_u64(seed);
    // A week ago, as after an outage: well inside the 30 days Stripe keeps events.
    let base = now - 7 * 86_400;
    let mut changes: Vec<Change> = Vec::new();
    let mut expected = BTreeMap::new();
    let mut customer = 0usize;
    while changes.len() < spec.events {
        customer += 1;
        let id = format!("cus_{prefix}_{customer}");
        let mut time = base + rng.random_range(0..3_600);
        let created_at = time;
        let updates = rng.random_range(spec.updates.clone());
        let deleted = rng.random_bool(spec.delete_ratio);
        let mut history = Vec::new();
        for version in 0..=updates {
            let kind = if version == 0 {
                Kind::Created
            } else {
                Kind::Updated
            };
            if version > 0 {
                // Updates never share a second with each other; the first may share the
                // creation's.
                let same = version == 1 && rng.random_bool(spec.same_second_ratio);
                time += if same { 0 } else { rng.random_range(1..30) };
            }
            history.push((kind, time, version));
        }
        if deleted {
            let same = rng.random_bool(spec.same_second_ratio);
            time += if same { 0 } else { rng.random_range(1..30) };
            history.push((Kind::Deleted, time, updates));
        }
        let (name, first, last) = NAMES[rng.random_range(0..NAMES.len())];
        for (n, (kind, time, version)) in history.into_iter().enumerate() {
            let (phone, country, phone_clean) = PHONES[rng.random_range(0..PHONES.len())];
            let email = format!("c{customer}.v{version}@{prefix}.example.com");
            let messy_email = match version % 3 {
                0 => format!("  {}  ", email.to_uppercase()),
                1 => format!("{}{}", &email[..1].to_uppercase(), &email[1..]),
                _ => email.clone(),
            };
            let state = Expected {
                deleted: kind == Kind::Deleted,
                time,
                email: email.clone(),
                firstname: first.map(str::to_string),
                lastname: last.to_string(),
                phone: phone_clean.map(str::to_string),
            };
            let plan = ["gold", "silver", ""][version % 3];
            let object = json!({
                "id": id,
                "object": "customer",
                "created": created_at,
                "name": name,
                "email": messy_email,
                "phone": phone,
                "description": if version % 2 == 0 { Value::Null } else { json!(format!(" version {version} ")) },
                "address": {
                    "line1": format!(" {customer} Market St "),
                    "line2": "",
                    "city": " San  Francisco ",
                    "state": "CA",
                    "postal_code": "94105 ",
                    "country": country,
                },
                "metadata": {"plan": plan, "version": version.to_string()},
                "livemode": false,
                "balance": 0,
                "invoice_settings": {"default_payment_method": null, "footer": null},
                "a_field_stripe_adds_later": {"nested": [version, n]},
            });
            let event_id = format!("evt_{prefix}_{customer}_{n}");
            let body = customer_event(&event_id, kind.event_type(), time, object);
            changes.push(Change {
                time,
                kind,
                delivery: Delivery {
                    event_id,
                    customer_id: id.clone(),
                    body,
                },
                state,
            });
        }
    }
    // The model: the greatest change by (time, kind) wins; a delete is final.
    let mut by_customer: HashMap<&str, Vec<&Change>> = HashMap::new();
    for c in &changes {
        by_customer.entry(&c.delivery.customer_id).or_default().push(c);
    }
    for (id, history) in by_customer {
        let winner = history
            .iter()
            .max_by_key(|c| (c.kind == Kind::Deleted, c.time, c.kind))
            .expect("every customer has a creation");
        expected.insert(id.to_string(), winner.state.clone());
    }

    // Delivery: time order, each event moved up to `shuffle_window` places, some twice.
    changes.sort_by_key(|c| (c.time, c.kind));
    let events = changes.len();
    let mut deliveries: Vec<Delivery> = changes.into_iter().map(|c| c.delivery).collect();
    let window = spec.shuffle_window.max(1);
    for i in 0..deliveries.len() {
        let j = (i + rng.random_range(0..window)).min(deliveries.len() - 1);
        deliveries.swap(i, j);
    }
    let mut duplicates: Vec<(usize, Delivery)> = Vec::new();
    for d in &deliveries {
        if rng.random_bool(spec.duplicate_ratio) {
            duplicates.push((rng.random_range(0..=deliveries.len()), d.clone()));
        }
    }
    duplicates.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    for (at, d) in duplicates {
        deliveries.insert(at, d);
    }
    // A few whole neighbourhoods delivered newest first, as concurrent retries do.
    for chunk in deliveries.chunks_mut(window * 4).step_by(3) {
        let n = window.min(chunk.len());
        chunk[..n].reverse();
    }
    Workload {
        seed,
        events,
        deliveries,
        expected,
    }
}

/// Every difference between the contacts and the model: missing, unexpected and field by field.
pub fn compare(contacts: &[Value], expected: &BTreeMap<String, Expected>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for c in contacts {
        let Some(id) = c["new_stripecustomerid"].as_str() else {
            problems.push(format!("a contact without a customer id: {c}"));
            continue;
        };
        *seen.entry(id).or_default() += 1;
        let Some(want) = expected.get(id) else {
            problems.push(format!("{id}: in Dataverse but never sent"));
            continue;
        };
        let deleted = c["new_stripedeleted"] == true;
        let active = c["statecode"] == 0;
        if want.deleted {
            if !deleted || active {
                problems.push(format!(
                    "{id}: deleted in Stripe but new_stripedeleted={} statecode={}",
                    c["new_stripedeleted"], c["statecode"]
                ));
            }
            if c["new_stripeeventcreated"] != want.time {
                problems.push(format!(
                    "{id}: tombstone time {} (want {})",
                    c["new_stripeeventcreated"], want.time
                ));
            }
            continue;
        }
        let fields = [
            ("new_stripedeleted", json!(false)),
            ("statecode", json!(0)),
            ("new_stripeeventcreated", json!(want.time)),
            ("emailaddress1", json!(want.email)),
            ("firstname", json!(want.firstname)),
            ("lastname", json!(want.lastname)),
            ("telephone1", json!(want.phone)),
        ];
        for (field, value) in fields {
            if c[field] != value {
                problems.push(format!("{id}: {field} is {} (want {value})", c[field]));
            }
        }
    }
    for (id, n) in &seen {
        if *n > 1 {
            problems.push(format!("{id}: {n} contacts"));
        }
    }
    for id in expected.keys() {
        if !seen.contains_key(id.as_str()) {
            problems.push(format!("{id}: missing in Dataverse"));
        }
    }
    problems
}

/// What a delivery run did.
#[derive(Debug, Clone, Default)]
pub struct SendReport {
    pub deliveries: usize,
    /// Deliveries answered 2xx (every one, unless some gave up at the deadline).
    pub acknowledged: usize,
    /// Every POST, including retries.
    pub attempts: usize,
    /// Failed attempts by answer (`503`, `connection error`, …).
    pub failures: BTreeMap<String, usize>,
    /// Deliveries never answered 2xx before the deadline.
    pub gave_up: Vec<String>,
    pub elapsed: Duration,
}

impl SendReport {
    /// The report of two runs, one after the other.
    pub fn and(mut self, later: SendReport) -> SendReport {
        self.deliveries += later.deliveries;
        self.acknowledged += later.acknowledged;
        self.attempts += later.attempts;
        for (answer, n) in later.failures {
            *self.failures.entry(answer).or_default() += n;
        }
        self.gave_up.extend(later.gave_up);
        self.elapsed += later.elapsed;
        self
    }
}

/// Delivers webhooks as Stripe does: concurrently, each retried until it is answered 2xx.
#[derive(Debug, Clone)]
pub struct Sender {
    http: reqwest::Client,
    url: String,
    secret: String,
    pub concurrency: usize,
    /// How long one delivery is retried before it is given up (Stripe: three days).
    pub deadline: Duration,
    /// Deliveries acknowledged so far, for a test that acts mid-stream.
    pub acknowledged: Arc<AtomicUsize>,
}

impl Sender {
    pub fn new(url: String, secret: &str) -> Self {
        Sender {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a plain HTTP client builds"),
            url,
            secret: secret.to_string(),
            concurrency: 16,
            deadline: Duration::from_secs(300),
            acknowledged: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Delivers every one of `deliveries`, retrying each until it gets a 2xx or its deadline.
    pub async fn deliver(&self, deliveries: &[Delivery]) -> SendReport {
        let start = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let report = Arc::new(Mutex::new(SendReport {
            deliveries: deliveries.len(),
            ..SendReport::default()
        }));
        let deliveries: Arc<Vec<Delivery>> = Arc::new(deliveries.to_vec());
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.concurrency.max(1) {
            let (sender, next, report, deliveries) =
                (self.clone(), next.clone(), report.clone(), deliveries.clone());
            workers.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(d) = deliveries.get(i) else { break };
                    sender.deliver_one(d, &report).await;
                }
            });
        }
        while workers.join_next().await.is_some() {}
        let mut report = report.lock().expect("no worker panicked holding it").clone();
        report.elapsed = start.elapsed();
        report
    }

    async fn deliver_one(&self, d: &Delivery, report: &Mutex<SendReport>) {
        let start = Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("the clock is after 1970")
                .as_secs();
            let answer = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .header(
                    "stripe-signature",
                    stripe_signature(&self.secret, t, d.body.as_bytes()),
                )
                .body(d.body.clone())
                .send()
                .await;
            let failure = match answer {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(r.status().as_u16().to_string()),
                Err(e) if e.is_timeout() => Some("timeout".to_string()),
                Err(_) => Some("connection error".to_string()),
            };
            {
                let mut r = report.lock().expect("no worker panicked holding it");
                r.attempts += 1;
                let Some(failure) = failure else {
                    r.acknowledged += 1;
                    self.acknowledged.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                *r.failures.entry(failure).or_default() += 1;
                if start.elapsed() > self.deadline {
                    r.gave_up.push(d.event_id.clone());
                    return;
                }
            }
            let jitter = rand::rng().random_range(0..=wait.as_millis() as u64 / 2);
            tokio::time::sleep(wait + Duration::from_millis(jitter)).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}

impl std::fmt::Display for SendReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} deliveries, {} acknowledged, {} attempts",
            self.deliveries, self.acknowledged, self.attempts
        )?;
        if !self.failures.is_empty() {
            let failures: Vec<String> = self.failures.iter().map(|(k, v)| format!("{k}×{v}")).collect();
            write!(f, " (refused or failed: {})", failures.join(", "))?;
        }
        if !self.gave_up.is_empty() {
            write!(f, ", {} given up", self.gave_up.len())?;
        }
        write!(f, ", in {:.1} s", self.elapsed.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_histories_match_the_model() {
        let spec = Spec::default();
        let now = 1_796_000_000;
        let w = generate_at("t", &spec, 7, now);
        assert!(w.events >= spec.events);
        assert!(w.deliveries.len() > w.events, "some events are delivered twice");
        let ids: std::collections::HashSet<&str> = w.deliveries.iter().map(|d| d.event_id.as_str()).collect();
        assert_eq!(ids.len(), w.events, "every event is delivered at least once");
        // Out of order: some customer's events arrive later than a newer one of theirs.
        let mut last: HashMap<&str, i64> = HashMap::new();
        let mut out_of_order = 0;
        for d in &w.deliveries {
            let v: Value = serde_json::from_str(&d.body).unwrap();
            let t = v["created"].as_i64().unwrap();
            if last.get(d.customer_id.as_str()).is_some_and(|&l| l > t) {
                out_of_order += 1;
            }
            last.insert(&d.customer_id, t);
        }
        assert!(out_of_order > 0);
        assert!(w.expected.values().any(|e| e.deleted));
        assert!(w.expected.values().any(|e| !e.deleted));
        // Same seed, same workload (times are relative to `now`, so the same `now` too).
        let again = generate_at("t", &spec, 7, now);
        assert_eq!(again.expected, w.expected);
    }

    #[test]
    fn compare_names_each_difference() {
        let mut expected = BTreeMap::new();
        expected.insert(
            "cus_1".to_string(),
            Expected {
                deleted: false,
                time: 5,
                email: "a@x".into(),
                firstname: None,
                lastname: "A".into(),
                phone: None,
            },
        );
        expected.insert(
            "cus_2".to_string(),
            Expected {
                deleted: true,
                time: 9,
                email: "b@x".into(),
                firstname: None,
                lastname: "B".into(),
                phone: None,
            },
        );
        let good = vec![
            json!({"new_stripecustomerid": "cus_1", "new_stripedeleted": false, "statecode": 0,
                   "new_stripeeventcreated": 5, "emailaddress1": "a@x", "firstname": null,
                   "lastname": "A", "telephone1": null}),
            json!({"new_stripecustomerid": "cus_2", "new_stripedeleted": true, "statecode": 1,
                   "new_stripeeventcreated": 9}),
        ];
        assert!(compare(&good, &expected).is_empty());
        let mut stale = good.clone();
        stale[0]["emailaddress1"] = json!("old@x");
        stale[1]["statecode"] = json!(0);
        let problems = compare(&stale, &expected);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("emailaddress1"));
        assert!(problems[1].contains("deleted in Stripe"));
        assert_eq!(
            compare(&good[..1], &expected),
            vec!["cus_2: missing in Dataverse"]
        );
    }
}
