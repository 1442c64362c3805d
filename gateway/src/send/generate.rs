//! Generated Stripe customer events for `gateway send`: bodies shaped like Stripe's, with the mess
//! real accounts hold (odd spacing and case, national phone formats, blank address lines,
//! lower-case country codes, nulls, fields this pipeline does not know yet). Pure code fed by a
//! seeded [`Rng`], so a seed reproduces a run; [`super`] signs and posts what this yields.

use std::collections::VecDeque;

use serde_json::{Map, Value, json};

/// The customer event types the generator makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventKind {
    #[value(name = "customer.created")]
    Created,
    #[value(name = "customer.updated")]
    Updated,
    #[value(name = "customer.deleted")]
    Deleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "customer.created",
            EventKind::Updated => "customer.updated",
            EventKind::Deleted => "customer.deleted",
        }
    }
}

/// One event ready to sign: the raw body and what the report line shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `evt_…`, or `-` for a file without one.
    pub id: String,
    /// The event type, or `-`.
    pub kind: String,
    /// `data.object.id`: events of one customer are sent one after the other.
    pub customer: Option<String>,
    /// The exact bytes to sign and send.
    pub body: Vec<u8>,
}

impl Event {
    /// An event given as bytes (a file): sent exactly as it is; the id, type and object id are
    /// read for the report when the bytes are JSON.
    pub fn from_bytes(body: Vec<u8>) -> Event {
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        Event {
            id: text(json.get("id")).unwrap_or_else(|| "-".into()),
            kind: text(json.get("type")).unwrap_or_else(|| "-".into()),
            customer: text(json.pointer("/data/object/id")),
            body,
        }
    }
}

/// A small, fast, seedable generator (SplitMix64): test data needs variety and reproducibility,
/// not cryptographic strength.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// `len` characters of Stripe's id alphabet.
    fn id_chars(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        (0..len).map(|_| *self.pick(ALPHABET) as char).collect()
    }

    fn hex(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| *self.pick(b"0123456789abcdef") as char)
            .collect()
    }

    fn digits(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
}

/// A new customer id in Stripe's shape (`cus_` and 14 characters).
pub fn customer_id(rng: &mut Rng) -> String {
    format!("cus_{}", rng.id_chars(14))
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// `count` events of one type, each for `customer` or, without one, for a new customer.
    Single {
        kind: EventKind,
        customer: Option<String>,
    },
    /// Customer histories: `customer.created`, then updates, and for a `deletes` share of the
    /// histories a final `customer.deleted`. With `customer`, one history of `count` events.
    Histories { customer: Option<String>, deletes: f64 },
}

/// The events of a plan, made one at a time so a large `count` costs no memory up front.
///
/// Histories are interleaved over a window of `width` customers, so one customer's events are
/// spread out and several customers are in flight at once. Each customer's `created` times
/// strictly increase, as the pipeline orders one customer's changes by them.
#[derive(Debug)]
pub struct Generator {
    rng: Rng,
    plan: Plan,
    remaining: u64,
    width: usize,
    active: VecDeque<History>,
}

/// One customer's state between its events.
#[derive(Debug)]
struct History {
    customer: Value,
    /// The types still to send, in order.
    steps: VecDeque<EventKind>,
    /// The `created` of the last event made, so the next is later.
    last_created: i64,
}

impl Generator {
    pub fn new(plan: Plan, count: u64, width: usize, rng: Rng) -> Generator {
        Generator {
            rng,
            plan,
            remaining: count,
            width: width.max(1),
            active: VecDeque::new(),
        }
    }

    /// The next event, with `now` (unix seconds) as its earliest `created`.
    pub fn next_at(&mut self, now: i64) -> Option<Event> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let event = match self.plan.clone() {
            Plan::Single { kind, customer } => {
                let id = customer.unwrap_or_else(|| customer_id(&mut self.rng));
                let object = customer_object(&mut self.rng, &id, now);
                let previous = (kind == EventKind::Updated).then(|| json!({"metadata": {}}));
                event(&mut self.rng, kind, now, object, previous)
            }
            Plan::Histories { customer, deletes } => self.next_in_history(customer, deletes, now),
        };
        Some(event)
    }

    fn next_in_history(&mut self, customer: Option<String>, deletes: f64, now: i64) -> Event {
        // Events not yet promised to an open history (this one included).
        let pending: u64 = self.active.iter().map(|h| h.steps.len() as u64).sum();
        let unplanned = (self.remaining + 1).saturating_sub(pending);
        // Open a new history while the window has room and the count allows one.
        let room = match &customer {
            Some(_) => self.active.is_empty(),
            None => self.active.len() < self.width,
        };
        if room && unplanned > 0 {
            let length = match &customer {
                // One customer: the whole count is its history.
                Some(_) => unplanned,
                None => (1 + self.rng.below(4) as u64).min(unplanned),
            };
            let delete = length >= 2 && self.rng.chance(deletes);
            let mut steps: VecDeque<EventKind> = VecDeque::new();
            steps.push_back(EventKind::Created);
            for _ in 1..length - u64::from(delete) {
                steps.push_back(EventKind::Updated);
            }
            if delete {
                steps.push_back(EventKind::Deleted);
            }
            let id = customer.unwrap_or_else(|| customer_id(&mut self.rng));
            self.active.push_back(History {
                customer: customer_object(&mut self.rng, &id, now),
                steps,
                last_created: i64::MIN,
            });
        }
        let mut history = self
            .active
            .pop_front()
            .expect("a history is open: with none open, every remaining event is unplanned");
        let kind = history.steps.pop_front().unwrap_or(EventKind::Updated);
        let created = now.max(history.last_created.saturating_add(1));
        history.last_created = created;
        let previous = match kind {
            EventKind::Updated => Some(update_customer(&mut self.rng, &mut history.customer)),
            _ => None,
        };
        let event = event(&mut self.rng, kind, created, history.customer.clone(), previous);
        if !history.steps.is_empty() {
            self.active.push_back(history);
        }
        event
    }
}

const FIRST_NAMES: &[&str] = &[
    "Ada",
    "José",
    "Zoë",
    "Siobhán",
    "Mary-Jane",
    "Åsa",
    "Björn",
    "Chidi",
    "Mei",
    "François",
    "Priya",
    "Łukasz",
    "Nuño",
    "Kai",
    "Anne Marie",
];
const LAST_NAMES: &[&str] = &[
    "Lovelace",
    "van der Berg",
    "de la Cruz",
    "Müller",
    "O'Neill",
    "Nguyen",
    "Smith Jr.",
    "Okafor",
    "Dubois",
    "García Márquez",
    "von Trapp",
    "MacDonald",
    "Kowalski",
    "Tanaka",
    "d'Arcy",
];
const DOMAINS: &[&str] = &["Example.COM", "example.org", "EXAMPLE.net", "mail.example.co.uk"];
const DESCRIPTIONS: &[&str] = &[
    "Imported from the old CRM",
    "  VIP — call before renewals ",
    "Signed up at the Berlin meetup",
    "",
];
const API_VERSIONS: &[&str] = &[
    "2025-04-30.basil",
    "2024-06-20",
    "2023-10-16",
    "2020-08-27",
    "2017-02-14",
];

/// A country, how its code may be stored, and numbers in national and international formats
/// (all from ranges set aside for fiction or examples).
struct Country {
    codes: &'static [&'static str],
    phones: &'static [&'static str],
    cities: &'static [(&'static str, Option<&'static str>, &'static str)],
    streets: &'static [&'static str],
}

const COUNTRIES: &[Country] = &[
    Country {
        codes: &["gb", "GB", " gb", "Gb"],
        phones: &[
            "020 7946 0#",
            "+44 20 7946 0#",
            "07700 900#",
            "+44 (0)7700 900#",
            "0117 496 0#",
        ],
        cities: &[("London", None, "SW1Y 4JH"), ("Bristol", Some("Avon"), "bs1 5tr")],
        streets: &[
            "12 St James's Square",
            "221b  Baker Street",
            "Flat 3, 5 Mill Lane",
        ],
    },
    Country {
        codes: &["us", "US", "us "],
        phones: &[
            "(415) 555-0#",
            "415.555.0#",
            "+1 415-555-0#",
            "1 (212) 555 0#",
            "415-555-0# x12",
        ],
        cities: &[
            ("San Francisco", Some("CA"), "94103"),
            ("New York", Some("ny"), "10001-1234"),
        ],
        streets: &["1 Market St", "350  Fifth Avenue", "PO Box 77"],
    },
    Country {
        codes: &["de", "DE"],
        phones: &["030 1234#", "+49 (0)30 1234#", "0049 30 1234#", "0151 2345#"],
        cities: &[("Berlin", None, "10115"), ("München", Some("Bayern"), "80331")],
        streets: &["Unter den Linden 1", "Hauptstraße  5a"],
    },
    Country {
        codes: &["fr", "FR", "Fr"],
        phones: &["01 23 45 6#", "+33 6 12 34 5#", "06.12.34.5#"],
        cities: &[("Paris", None, "75001"), ("Lyon", None, "69002")],
        streets: &["10 rue de Rivoli", "  3 place Bellecour"],
    },
    Country {
        codes: &["nl", "NL"],
        phones: &["020-123 4#", "+31 6 1234 5#", "06-1234 5#"],
        cities: &[
            ("Amsterdam", Some("Noord-Holland"), "1012 AB"),
            ("Utrecht", None, "3511ab"),
        ],
        streets: &["Damrak 1", "Oudegracht  99"],
    },
];

/// Odd spacing and case, as typed into forms.
fn messy(rng: &mut Rng, text: &str) -> String {
    let cased = match rng.below(5) {
        0 => text.to_uppercase(),
        1 => text.to_lowercase(),
        _ => text.to_string(),
    };
    let spaced = if rng.chance(0.4) {
        cased.replace(' ', "  ")
    } else {
        cased
    };
    match rng.below(4) {
        0 => format!("  {spaced}"),
        1 => format!("{spaced} "),
        _ => spaced,
    }
}

fn phone(rng: &mut Rng, country: &Country) -> Value {
    if rng.chance(0.1) {
        return Value::Null;
    }
    let pattern = rng.pick(country.phones);
    let digits = rng.digits(3);
    json!(pattern.replace('#', &digits))
}

fn email(rng: &mut Rng, first: &str, last: &str) -> Value {
    if rng.chance(0.1) {
        return Value::Null;
    }
    let local: String = format!("{first}.{last}")
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '.')
        .collect();
    let domain = rng.pick(DOMAINS);
    match rng.below(6) {
        0 => json!(format!("  {local}@{domain} ")),
        1 => json!(format!("{}@{domain}", local.to_uppercase())),
        // Occasionally not an address at all, as some sign-up forms allow.
        2 if rng.chance(0.3) => json!(format!("{local} at {domain}")),
        _ => json!(format!("{local}@{domain}")),
    }
}

fn address(rng: &mut Rng, country: &Country) -> Value {
    let (city, state, postal) = *rng.pick(country.cities);
    let street = rng.pick(country.streets);
    let line1 = if rng.chance(0.2) {
        format!("{street}\n\n")
    } else {
        messy(rng, street)
    };
    let line2 = match rng.below(4) {
        0 => Value::Null,
        1 => json!(""),
        2 => json!("   "),
        _ => json!(format!("Floor {}", 1 + rng.below(9))),
    };
    json!({
        "city": messy(rng, city),
        "country": rng.pick(country.codes),
        "line1": line1,
        "line2": line2,
        "postal_code": postal,
        "state": state,
    })
}

/// A customer object as Stripe renders it, messy fields included.
fn customer_object(rng: &mut Rng, id: &str, created: i64) -> Value {
    let country = rng.pick(COUNTRIES);
    let first = *rng.pick(FIRST_NAMES);
    let last = *rng.pick(LAST_NAMES);
    let name = match rng.below(10) {
        0 => Value::Null,
        1 => json!(messy(rng, first)),
        _ => json!(messy(rng, &format!("{first} {last}"))),
    };
    let billing = if rng.chance(0.15) {
        Value::Null
    } else {
        address(rng, country)
    };
    let shipping = if rng.chance(0.3) {
        json!({
            "address": address(rng, country),
            "name": messy(rng, &format!("{first} {last}")),
            "phone": phone(rng, country),
        })
    } else {
        Value::Null
    };
    let description = match rng.below(3) {
        0 => Value::Null,
        _ => json!(rng.pick(DESCRIPTIONS)),
    };
    let mut metadata = Map::new();
    metadata.insert("source".into(), json!("gateway-send"));
    if rng.chance(0.5) {
        metadata.insert(
            "crm_tier".into(),
            json!(rng.pick(&["gold", "Silver", " bronze "])),
        );
    }
    if rng.chance(0.3) {
        metadata.insert("legacy_id".into(), json!(rng.digits(6)));
    }
    json!({
        "id": id,
        "object": "customer",
        "address": billing,
        "balance": 0,
        "created": created,
        "currency": null,
        "default_source": null,
        "delinquent": false,
        "description": description,
        "discount": null,
        "email": email(rng, first, last),
        "invoice_prefix": rng.id_chars(8).to_uppercase(),
        "invoice_settings": {
            "custom_fields": null,
            "default_payment_method": null,
            "footer": null,
            "rendering_options": null,
        },
        "livemode": false,
        "metadata": metadata,
        "name": name,
        "next_invoice_sequence": 1,
        "phone": phone(rng, country),
        "preferred_locales": [],
        "shipping": shipping,
        "tax_exempt": "none",
        "test_clock": null,
        // Fields Stripe may add after this pipeline was written: they must be ignored.
        "loyalty_profile": {"tier_since": created, "labels": ["beta"]},
    })
}

/// Changes some fields of `customer` as an update would; returns `previous_attributes`.
fn update_customer(rng: &mut Rng, customer: &mut Value) -> Value {
    let country = rng.pick(COUNTRIES);
    let mut previous = Map::new();
    let first = *rng.pick(FIRST_NAMES);
    let last = *rng.pick(LAST_NAMES);
    let changes = 1 + rng.below(3);
    for _ in 0..changes {
        let (field, value) = match rng.below(5) {
            0 => ("email", email(rng, first, last)),
            1 => ("phone", phone(rng, country)),
            2 => ("address", address(rng, country)),
            3 => ("name", json!(messy(rng, &format!("{first} {last}")))),
            _ => {
                // A metadata key set, or unset with null (Stripe's way of deleting a key).
                let mut metadata = customer["metadata"].clone();
                let old = metadata.clone();
                if rng.chance(0.5) {
                    metadata["crm_tier"] = Value::Null;
                } else {
                    metadata["last_campaign"] = json!(format!("spring-{}", rng.digits(2)));
                }
                customer["metadata"] = metadata;
                previous.insert("metadata".into(), old);
                continue;
            }
        };
        previous.insert(field.into(), customer[field].take());
        customer[field] = value;
    }
    Value::Object(previous)
}

/// The event envelope around `object`.
fn event(rng: &mut Rng, kind: EventKind, created: i64, object: Value, previous: Option<Value>) -> Event {
    let id = format!("evt_1{}", rng.id_chars(23));
    let customer = object["id"].as_str().map(str::to_string);
    let api_version = *rng.pick(API_VERSIONS);
    // Events caused by an API call carry its request; dashboard and automatic ones carry nulls;
    // API versions before 2017-05-25 sent a bare id string.
    let request = match rng.below(3) {
        0 => json!({"id": null, "idempotency_key": null}),
        1 if api_version < "2017-05-25" => json!(format!("req_{}", rng.id_chars(14))),
        _ => json!({
            "id": format!("req_{}", rng.id_chars(14)),
            "idempotency_key": format!(
                "{}-{}-4{}-a{}-{}",
                rng.hex(8),
                rng.hex(4),
                rng.hex(3),
                rng.hex(3),
                rng.hex(12)
            ),
        }),
    };
    let mut data = Map::new();
    data.insert("object".into(), object);
    if let Some(previous) = previous {
        data.insert("previous_attributes".into(), previous);
    }
    let body = json!({
        "id": id,
        "object": "event",
        "api_version": api_version,
        "created": created,
        "data": data,
        "livemode": false,
        "pending_webhooks": 1 + rng.below(3),
        "request": request,
        "type": kind.as_str(),
        // An envelope field this pipeline does not know: it must be ignored.
        "context": null,
    });
    Event {
        id,
        kind: kind.as_str().to_string(),
        customer,
        body: serde_json::to_vec_pretty(&body).expect("a JSON value always serialises"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::{VerifiedEvent, Verifier, signature};

    const NOW: i64 = 1_750_000_000;

    fn all(plan: Plan, count: u64, seed: u64) -> Vec<Event> {
        let mut g = Generator::new(plan, count, 4, Rng::new(seed));
        std::iter::from_fn(|| g.next_at(NOW)).collect()
    }

    /// A string or null: the enricher dead-letters a field of another JSON type.
    fn text_or_null(v: &Value, what: &str) {
        assert!(v.is_null() || v.is_string(), "{what} is {v}");
    }

    fn check_address(v: &Value, what: &str) {
        if v.is_null() {
            return;
        }
        let a = v.as_object().unwrap_or_else(|| panic!("{what} is {v}"));
        for field in ["line1", "line2", "city", "state", "postal_code", "country"] {
            text_or_null(&a[field], &format!("{what}.{field}"));
        }
    }

    /// Every generated event passes the gateway's own verifier and lenient parser, keys on the
    /// customer, and carries the fields the enricher reads in the JSON types it accepts.
    #[test]
    fn every_generated_event_is_accepted_and_carries_the_enricher_fields() {
        let verifier = Verifier::new(["whsec_gen"], Duration::from_secs(300), Duration::from_secs(60));
        let plans = [
            Plan::Histories {
                customer: None,
                deletes: 0.5,
            },
            Plan::Histories {
                customer: Some("cus_Fixed".into()),
                deletes: 1.0,
            },
            Plan::Single {
                kind: EventKind::Created,
                customer: None,
            },
            Plan::Single {
                kind: EventKind::Updated,
                customer: Some("cus_Given".into()),
            },
            Plan::Single {
                kind: EventKind::Deleted,
                customer: None,
            },
        ];
        let mut seen_kinds = std::collections::BTreeSet::new();
        for (seed, plan) in (0..40).flat_map(|s| plans.iter().map(move |p| (s, p))) {
            for e in all(plan.clone(), 25, seed) {
                let header = signature::signature_header("whsec_gen", NOW, &e.body);
                let payload = verifier
                    .verify(
                        Some(header.as_bytes()),
                        e.body.clone().into(),
                        UNIX_EPOCH + Duration::from_secs(NOW as u64),
                    )
                    .expect("signed bodies verify");
                let parsed = VerifiedEvent::parse(payload, 0).expect("the gateway's parser accepts it");
                let customer = e.customer.clone().expect("a customer id");
                assert_eq!(parsed.event_id(), e.id);
                assert_eq!(parsed.event_type(), e.kind);
                assert_eq!(parsed.key(), customer);
                let record = parsed.record();
                assert_eq!(record.object_type.as_deref(), Some("customer"));
                assert!(record.api_version.is_some());
                assert!(!record.livemode);
                seen_kinds.insert(e.kind.clone());

                let json: Value = serde_json::from_slice(&e.body).unwrap();
                assert!(json["pending_webhooks"].is_u64());
                assert!(json["request"].is_object() || json["request"].is_string());
                let o = &json["data"]["object"];
                assert!(o["id"].as_str().unwrap().starts_with("cus_"));
                for field in ["name", "email", "phone", "description"] {
                    text_or_null(&o[field], field);
                }
                check_address(&o["address"], "address");
                if !o["shipping"].is_null() {
                    text_or_null(&o["shipping"]["name"], "shipping.name");
                    text_or_null(&o["shipping"]["phone"], "shipping.phone");
                    check_address(&o["shipping"]["address"], "shipping.address");
                }
                let metadata = o["metadata"].as_object().expect("metadata is an object");
                assert!(metadata.values().all(|v| v.is_string() || v.is_null()));
                assert!(o["livemode"].is_boolean());
                if e.kind == "customer.updated" {
                    assert!(json["data"]["previous_attributes"].is_object());
                }
            }
        }
        assert_eq!(seen_kinds.len(), 3, "{seen_kinds:?}");
    }

    /// Histories start with a create, continue with updates, end at most with one delete, and
    /// each customer's `created` strictly increases.
    #[test]
    fn histories_are_ordered_per_customer() {
        let mut deleted = 0;
        for seed in 0..50 {
            let events = all(
                Plan::Histories {
                    customer: None,
                    deletes: 0.3,
                },
                40,
                seed,
            );
            assert_eq!(events.len(), 40);
            let mut per_customer: std::collections::HashMap<String, Vec<(String, i64)>> = Default::default();
            for e in &events {
                let json: Value = serde_json::from_slice(&e.body).unwrap();
                per_customer
                    .entry(e.customer.clone().unwrap())
                    .or_default()
                    .push((e.kind.clone(), json["created"].as_i64().unwrap()));
            }
            assert!(per_customer.len() > 5, "several customers in 40 events");
            for (customer, history) in per_customer {
                assert_eq!(history[0].0, "customer.created", "{customer}: {history:?}");
                for (i, (kind, _)) in history.iter().enumerate().skip(1) {
                    let last = i == history.len() - 1;
                    assert!(
                        kind == "customer.updated" || (last && kind == "customer.deleted"),
                        "{customer}: {history:?}"
                    );
                }
                deleted += usize::from(history.last().unwrap().0 == "customer.deleted");
                assert!(history.windows(2).all(|w| w[0].1 < w[1].1), "{history:?}");
            }
        }
        assert!(deleted > 0, "some histories end in a delete");
    }

    #[test]
    fn one_given_customer_gets_the_whole_count_as_one_history() {
        let events = all(
            Plan::Histories {
                customer: Some("cus_Mine".into()),
                deletes: 1.0,
            },
            5,
            7,
        );
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "customer.created",
                "customer.updated",
                "customer.updated",
                "customer.updated",
                "customer.deleted"
            ]
        );
        assert!(events.iter().all(|e| e.customer.as_deref() == Some("cus_Mine")));
        // One event only: a create, never a lone delete.
        let one = all(
            Plan::Histories {
                customer: None,
                deletes: 1.0,
            },
            1,
            7,
        );
        assert_eq!(one[0].kind, "customer.created");
    }

    #[test]
    fn a_seed_reproduces_the_events_and_ids_are_stripe_shaped() {
        let plan = Plan::Histories {
            customer: None,
            deletes: 0.2,
        };
        assert_eq!(all(plan.clone(), 10, 42), all(plan.clone(), 10, 42));
        assert_ne!(all(plan.clone(), 10, 42), all(plan, 10, 43));
        let mut rng = Rng::new(1);
        let id = customer_id(&mut rng);
        assert_eq!(id.len(), 18);
        assert!(id[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn events_from_bytes_keep_the_bytes_and_read_the_report_fields() {
        let body = br#"{"id":"evt_9","type":"customer.updated","data":{"object":{"id":"cus_9"}}}"#;
        let e = Event::from_bytes(body.to_vec());
        assert_eq!(e.body, body);
        assert_eq!((e.id.as_str(), e.kind.as_str()), ("evt_9", "customer.updated"));
        assert_eq!(e.customer.as_deref(), Some("cus_9"));
        let junk = Event::from_bytes(b"not json".to_vec());
        assert_eq!(
            (junk.id.as_str(), junk.kind.as_str(), junk.customer),
            ("-", "-", None)
        );
    }
}
