//! Turn a Stripe customer event into a [`Customer`] change.
//!
//! Everything here is pure: no I/O, no clock, no configuration, no shared state. The same input
//! always gives the same output, so a replayed event produces the same record. The rules are
//! written for users, with examples, in `enricher/NORMALIZATION.md`; each function below says which
//! rule it implements.
//!
//! Entry points:
//! * [`customer_from_event_body`] (or [`customer_from_stripe_event`]): raw webhook body → change.
//! * [`customer_from_object`]: a customer object (e.g. read from Stripe's API) → change, by the
//!   same path.
//! * [`normalize_customer`]: an already parsed [`StripeCustomer`] → change.
//! * [`renormalize`]: apply the rules again to a [`Customer`]; a fixed point for every record this
//!   module produces (`renormalize(&c) == c`).
//! * The field rules on their own: [`normalize_email`], [`normalize_phone`], [`split_name`],
//!   [`normalize_country`].

use std::collections::BTreeMap;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};

use phonenumber::{Mode, PhoneNumber, country::Id as PhoneRegion};
use schemas::{Customer, CustomerOp, StripeEvent};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Stripe event type: a customer was created.
pub const CUSTOMER_CREATED: &str = "customer.created";
/// Stripe event type: a customer was updated.
pub const CUSTOMER_UPDATED: &str = "customer.updated";
/// Stripe event type: a customer was deleted.
pub const CUSTOMER_DELETED: &str = "customer.deleted";

/// True for the three event types whose `data.object` is a customer. Other `customer.*` types
/// (`customer.subscription.created`, `customer.source.updated`, `customer.discount.deleted`, …)
/// carry a different object and are not customer changes.
pub fn is_customer_event(event_type: &str) -> bool {
    matches!(event_type, CUSTOMER_CREATED | CUSTOMER_UPDATED | CUSTOMER_DELETED)
}

// ---------------------------------------------------------------------------------------------
// Input
// ---------------------------------------------------------------------------------------------

/// The fields of a Stripe customer object the pipeline reads.
///
/// Lenient: every field is optional, `null` is accepted anywhere, unknown fields are ignored (Stripe
/// adds fields without notice). A field of the wrong JSON type (say a number where Stripe documents
/// a string) is an error: it means the object is not what Stripe documents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct StripeCustomer {
    /// `cus_…`.
    pub id: Option<String>,
    /// `"customer"` on a customer object.
    pub object: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub description: Option<String>,
    /// The billing address.
    pub address: Option<StripeAddress>,
    pub shipping: Option<StripeShipping>,
    /// Stripe's string map. Keys whose value is `null` are dropped (in Stripe, `null` unsets a key).
    #[serde(default, deserialize_with = "metadata_dropping_nulls")]
    pub metadata: Option<BTreeMap<String, String>>,
    pub livemode: Option<bool>,
    /// Set on deleted customers by some API versions. Not used: the event type decides.
    pub deleted: Option<bool>,
}

/// A Stripe address (`customer.address`, `customer.shipping.address`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct StripeAddress {
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub postal_code: Option<String>,
    /// Documented as ISO 3166-1 alpha-2, but not always what is stored.
    pub country: Option<String>,
}

/// `customer.shipping`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct StripeShipping {
    pub name: Option<String>,
    pub phone: Option<String>,
    pub address: Option<StripeAddress>,
}

fn metadata_dropping_nulls<'de, D>(deserializer: D) -> Result<Option<BTreeMap<String, String>>, D::Error>
where
    D: Deserializer<'de>,
{
    let raw: Option<BTreeMap<String, Option<String>>> = Option::deserialize(deserializer)?;
    Ok(raw.map(|map| map.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect()))
}

/// The event a customer object arrived in: copied into the output record so the sink can order
/// changes (`source_event_created`) and trace them back (`source_event_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceEvent<'a> {
    /// `evt_…`.
    pub id: &'a str,
    /// e.g. `customer.updated`; decides upsert or delete.
    pub event_type: &'a str,
    /// Unix seconds, as set by Stripe.
    pub created: i64,
    pub livemode: bool,
}

impl<'a> From<&'a StripeEvent> for SourceEvent<'a> {
    fn from(event: &'a StripeEvent) -> Self {
        SourceEvent {
            id: &event.event_id,
            event_type: &event.event_type,
            created: event.created,
            livemode: event.livemode,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and warnings
// ---------------------------------------------------------------------------------------------

/// Why an event could not be turned into a customer change.
///
/// Every variant is permanent: the same bytes will fail the same way on every retry, so the record
/// belongs on the dead-letter topic. [`NormalizeError::class`] is a stable name for its headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    /// The body is not JSON (or not UTF-8, or nested too deeply).
    #[error("event body is not valid JSON: {0}")]
    NotJson(String),
    /// The body, or its `data.object`, is missing or is not a JSON object.
    #[error("{what} is missing or is not a JSON object")]
    NotAnObject { what: &'static str },
    /// `data.object` has a field of the wrong type, or is not a customer object.
    #[error("data.object is not a Stripe customer: {0}")]
    InvalidCustomer(String),
    /// The customer has no `id` (missing, `null`, not a string, or blank).
    #[error("customer has no id")]
    MissingCustomerId,
    /// [`normalize_customer`] was called for an event type that is not a customer change.
    #[error("event type {0:?} is not customer.created, customer.updated or customer.deleted")]
    UnsupportedEventType(String),
}

impl NormalizeError {
    /// A stable snake_case name of the error kind, for dead-letter headers and metrics labels.
    pub fn class(&self) -> &'static str {
        match self {
            NormalizeError::NotJson(_) => "not_json",
            NormalizeError::NotAnObject { .. } => "not_an_object",
            NormalizeError::InvalidCustomer(_) => "invalid_customer",
            NormalizeError::MissingCustomerId => "missing_customer_id",
            NormalizeError::UnsupportedEventType(_) => "unsupported_event_type",
        }
    }
}

/// A note about a value that was kept but could not be fully normalised, or was filled in.
/// Recorded in [`Customer::warnings`] by its [`Warning::as_str`] name; this is the whole
/// vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Warning {
    /// `email_invalid`: the email does not look like an address; kept as given (trimmed, lower case).
    EmailInvalid,
    /// `phone_unparsed`: the phone could not be read as a number; kept as given (trimmed).
    PhoneUnparsed,
    /// `phone_invalid`: the phone was read but is not a valid number for its country; kept as
    /// given (trimmed).
    PhoneInvalid,
    /// `phone_extension_dropped`: the phone had an extension, which E.164 cannot carry.
    PhoneExtensionDropped,
    /// `country_unknown`: the address country is not an ISO 3166-1 code; country left empty.
    CountryUnknown,
    /// `name_missing`: the customer has no name; `last_name` was filled in from the email address
    /// or the customer id.
    NameMissing,
    /// `address_from_shipping`: the billing address is empty, so the shipping address was used.
    AddressFromShipping,
}

impl Warning {
    /// Every warning, in declaration order.
    pub const ALL: [Warning; 7] = [
        Warning::EmailInvalid,
        Warning::PhoneUnparsed,
        Warning::PhoneInvalid,
        Warning::PhoneExtensionDropped,
        Warning::CountryUnknown,
        Warning::NameMissing,
        Warning::AddressFromShipping,
    ];

    /// The snake_case name stored in [`Customer::warnings`].
    pub fn as_str(self) -> &'static str {
        match self {
            Warning::EmailInvalid => "email_invalid",
            Warning::PhoneUnparsed => "phone_unparsed",
            Warning::PhoneInvalid => "phone_invalid",
            Warning::PhoneExtensionDropped => "phone_extension_dropped",
            Warning::CountryUnknown => "country_unknown",
            Warning::NameMissing => "name_missing",
            Warning::AddressFromShipping => "address_from_shipping",
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// Parse a Stripe event body (the raw webhook body, exactly as received) and produce the customer
/// change it describes.
///
/// `event` says what the event is (the gateway has already parsed it into the `StripeEvent`
/// record); its `event_type` is the truth, the body's own `type` is not read. Returns `Ok(None)`
/// without reading the body when the type is not [`is_customer_event`]. For `customer.deleted`
/// only `data.object.id` is read, so a deletion goes through even if the rest of the object is
/// malformed.
pub fn customer_from_event_body(
    body: &[u8],
    event: SourceEvent<'_>,
) -> Result<Option<Customer>, NormalizeError> {
    if !is_customer_event(event.event_type) {
        return Ok(None);
    }
    let root: Value = serde_json::from_slice(body).map_err(|e| NormalizeError::NotJson(e.to_string()))?;
    let Value::Object(mut root) = root else {
        return Err(NormalizeError::NotAnObject { what: "event body" });
    };
    let object = root
        .get_mut("data")
        .and_then(|data| data.get_mut("object"))
        .map(Value::take);
    let Some(object @ Value::Object(_)) = object else {
        return Err(NormalizeError::NotAnObject { what: "data.object" });
    };
    customer_from_object(&object, event).map(Some)
}

/// The change a Stripe customer object makes, as if it had arrived as the `data.object` of
/// `event`: the same reading and rules as [`customer_from_event_body`] (which calls it), for a
/// customer fetched from Stripe's API rather than delivered in a webhook. `event` must be a
/// customer event type ([`NormalizeError::UnsupportedEventType`] otherwise).
pub fn customer_from_object(object: &Value, event: SourceEvent<'_>) -> Result<Customer, NormalizeError> {
    if !is_customer_event(event.event_type) {
        return Err(NormalizeError::UnsupportedEventType(event.event_type.to_owned()));
    }
    if !object.is_object() {
        return Err(NormalizeError::NotAnObject { what: "data.object" });
    }
    // The id first, the same way for every event type: without it there is nothing to key on.
    let id = object.get("id").and_then(Value::as_str).and_then(clean_text);
    let id = id.ok_or(NormalizeError::MissingCustomerId)?;
    if event.event_type == CUSTOMER_DELETED {
        return Ok(deletion(id, event));
    }

    let customer =
        StripeCustomer::deserialize(object).map_err(|e| NormalizeError::InvalidCustomer(e.to_string()))?;
    if let Some(kind) = customer.object.as_deref()
        && kind != "customer"
    {
        return Err(NormalizeError::InvalidCustomer(format!(
            "object is {kind:?}, expected \"customer\""
        )));
    }
    normalize_customer(&customer, event)
}

/// [`customer_from_event_body`] for a record of the `stripe.events` topic.
pub fn customer_from_stripe_event(event: &StripeEvent) -> Result<Option<Customer>, NormalizeError> {
    customer_from_event_body(&event.raw_body, SourceEvent::from(event))
}

/// Produce the change a customer event makes: an UPSERT for `customer.created` and
/// `customer.updated`, a DELETE for `customer.deleted` (whatever the object's `deleted` flag
/// says). The source fields and `livemode` come from `event`.
pub fn normalize_customer(c: &StripeCustomer, event: SourceEvent<'_>) -> Result<Customer, NormalizeError> {
    if !is_customer_event(event.event_type) {
        return Err(NormalizeError::UnsupportedEventType(event.event_type.to_owned()));
    }
    let customer_id =
        c.id.as_deref()
            .and_then(clean_text)
            .ok_or(NormalizeError::MissingCustomerId)?;
    if event.event_type == CUSTOMER_DELETED {
        return Ok(deletion(customer_id, event));
    }

    let mut warnings = Vec::new();

    let (email, w) = map_field(c.email.as_deref(), normalize_email);
    warnings.extend(w);

    // One address, never a mix of two: billing when it has anything in it, else shipping.
    let shipping_address = c.shipping.as_ref().and_then(|s| s.address.as_ref());
    let address = match (c.address.as_ref(), shipping_address) {
        (Some(billing), _) if !address_is_blank(billing) => Some(billing),
        (_, Some(shipping)) if !address_is_blank(shipping) => {
            warnings.push(Warning::AddressFromShipping);
            Some(shipping)
        }
        _ => None,
    };
    let field = |get: fn(&StripeAddress) -> &Option<String>| address.and_then(|a| get(a).as_deref());
    let (country, w) = map_field(field(|a| &a.country), normalize_country);
    warnings.extend(w);

    let (phone, w) = map_field(c.phone.as_deref(), |p| {
        normalize_phone(p, country.map(|c| c.code))
    });
    warnings.extend(w);

    let name = c.name.as_deref().map(split_name).unwrap_or_default();
    let last_name = match name.last {
        Some(last) => last,
        None => {
            warnings.push(Warning::NameMissing);
            fallback_last_name(email.as_deref(), &customer_id)
        }
    };

    Ok(Customer {
        customer_id,
        op: CustomerOp::Upsert,
        email,
        first_name: name.first,
        last_name: Some(last_name),
        full_name: name.full,
        phone,
        description: c.description.as_deref().and_then(clean_text),
        address_line1: field(|a| &a.line1).and_then(clean_line),
        address_line2: field(|a| &a.line2).and_then(clean_line),
        address_city: field(|a| &a.city).and_then(clean_line),
        address_state: field(|a| &a.state).and_then(clean_line),
        address_postal_code: field(|a| &a.postal_code).and_then(clean_line),
        address_country_code: country.map(|c| c.code.to_owned()),
        address_country_name: country.map(|c| c.name.to_owned()),
        metadata: c.metadata.clone().unwrap_or_default(),
        warnings: warning_names(warnings, &[]),
        livemode: event.livemode,
        source_event_id: event.id.to_owned(),
        source_event_type: event.event_type.to_owned(),
        source_event_created: event.created,
    })
}

/// Apply the rules again to a record that is already normalised (or was built some other way).
///
/// For every record this module produces, the result is equal to its input: an E.164 phone stays,
/// a lower-case email stays, name parts are not split again (they are only re-collapsed), the
/// country name is looked up again from the code, warnings already present are kept. A DELETE is
/// reduced to what [`Customer::deletion`] carries.
pub fn renormalize(c: &Customer) -> Customer {
    let customer_id = clean_text(&c.customer_id).unwrap_or_else(|| c.customer_id.clone());
    if c.op == CustomerOp::Delete {
        return Customer::deletion(
            customer_id,
            c.source_event_id.clone(),
            c.source_event_type.clone(),
            c.source_event_created,
            c.livemode,
        );
    }

    let mut warnings = Vec::new();
    let (email, w) = map_field(c.email.as_deref(), normalize_email);
    warnings.extend(w);
    let (country, w) = map_field(c.address_country_code.as_deref(), normalize_country);
    warnings.extend(w);
    let (phone, w) = map_field(c.phone.as_deref(), |p| {
        normalize_phone(p, country.map(|c| c.code))
    });
    warnings.extend(w);
    let last_name = match c.last_name.as_deref().and_then(clean_line) {
        Some(last) => last,
        None => {
            warnings.push(Warning::NameMissing);
            fallback_last_name(email.as_deref(), &customer_id)
        }
    };

    Customer {
        customer_id,
        op: CustomerOp::Upsert,
        email,
        first_name: c.first_name.as_deref().and_then(clean_line),
        last_name: Some(last_name),
        full_name: c.full_name.as_deref().and_then(clean_line),
        phone,
        description: c.description.as_deref().and_then(clean_text),
        address_line1: c.address_line1.as_deref().and_then(clean_line),
        address_line2: c.address_line2.as_deref().and_then(clean_line),
        address_city: c.address_city.as_deref().and_then(clean_line),
        address_state: c.address_state.as_deref().and_then(clean_line),
        address_postal_code: c.address_postal_code.as_deref().and_then(clean_line),
        address_country_code: country.map(|c| c.code.to_owned()),
        address_country_name: country.map(|c| c.name.to_owned()),
        metadata: c.metadata.clone(),
        warnings: warning_names(warnings, &c.warnings),
        livemode: c.livemode,
        source_event_id: c.source_event_id.clone(),
        source_event_type: c.source_event_type.clone(),
        source_event_created: c.source_event_created,
    }
}

fn deletion(customer_id: String, event: SourceEvent<'_>) -> Customer {
    Customer::deletion(
        customer_id,
        event.id,
        event.event_type,
        event.created,
        event.livemode,
    )
}

/// Run a field rule on a present value; an absent value stays absent without a warning.
fn map_field<'a, T>(
    raw: Option<&'a str>,
    rule: impl FnOnce(&'a str) -> (Option<T>, Option<Warning>),
) -> (Option<T>, Option<Warning>) {
    raw.map_or((None, None), rule)
}

/// Warning names, sorted and without duplicates: a canonical order, so re-normalising a record
/// (which keeps the warnings it already has) changes nothing.
fn warning_names(new: Vec<Warning>, existing: &[String]) -> Vec<String> {
    let mut names: Vec<String> = existing
        .iter()
        .cloned()
        .chain(new.into_iter().map(|w| w.as_str().to_owned()))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn address_is_blank(a: &StripeAddress) -> bool {
    [&a.line1, &a.line2, &a.city, &a.state, &a.postal_code, &a.country]
        .into_iter()
        .all(|f| f.as_deref().and_then(clean_text).is_none())
}

/// The last name used when a customer has no name: the local part of the (normalised) email, or
/// the customer id when there is no email or it has nothing before its last `@`.
fn fallback_last_name(email: Option<&str>, customer_id: &str) -> String {
    email
        .and_then(|e| e.rsplit_once('@'))
        .and_then(|(local, _)| clean_line(local))
        .or_else(|| clean_line(customer_id))
        .unwrap_or_else(|| customer_id.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Text helpers
// ---------------------------------------------------------------------------------------------

/// Whitespace for trimming and collapsing: Unicode white space plus the invisible characters that
/// copy-and-paste leaves behind (zero-width space, byte-order mark).
fn is_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{200B}' | '\u{FEFF}')
}

/// Trimmed; `None` when nothing is left. For multi-line text (descriptions) and values whose inner
/// spacing matters (ids, emails, phones).
fn clean_text(s: &str) -> Option<String> {
    let t = s.trim_matches(is_space);
    (!t.is_empty()).then(|| t.to_owned())
}

/// Trimmed, and every inner run of whitespace (tabs and line breaks included) made one space;
/// `None` when nothing is left. For single-line values: names and address fields.
fn clean_line(s: &str) -> Option<String> {
    let collapsed = s
        .split(is_space)
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    (!collapsed.is_empty()).then_some(collapsed)
}

// ---------------------------------------------------------------------------------------------
// Email
// ---------------------------------------------------------------------------------------------

/// Email rule: trim and lower-case the whole address; empty → `None`. A value that does not look
/// like an address is kept (someone may still read it) with [`Warning::EmailInvalid`].
///
/// The whole address is lower-cased, local part included. RFC 5321 lets a server treat the local
/// part as case-sensitive, but no mainstream provider does, and the address is used as a matching
/// key (Dataverse duplicate detection compares it as text): `John.Doe@Example.COM` and
/// `john.doe@example.com` must be one person. The domain is case-insensitive by definition.
pub fn normalize_email(raw: &str) -> (Option<String>, Option<Warning>) {
    let Some(trimmed) = clean_text(raw) else {
        return (None, None);
    };
    let email = trimmed.to_lowercase();
    let warning = (!looks_like_email(&email)).then_some(Warning::EmailInvalid);
    (Some(email), warning)
}

/// A deliberately simple syntactic check (no DNS, no quoted local parts): one `@`, a plausible
/// local part, and a domain of at least two dot-separated labels. Unicode letters are allowed
/// (internationalised addresses).
fn looks_like_email(email: &str) -> bool {
    if email.chars().count() > 254 || email.chars().any(|c| is_space(c) || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.chars().count() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && !local.chars().any(|c| "@()<>[]\\,;:\"".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.chars().count() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    let tld_ok = labels
        .last()
        .is_some_and(|tld| tld.chars().count() >= 2 && !tld.chars().all(|c| c.is_ascii_digit()));
    local_ok && labels.len() >= 2 && labels.iter().all(label_ok) && tld_ok
}

// ---------------------------------------------------------------------------------------------
// Phone
// ---------------------------------------------------------------------------------------------

/// Inputs longer than this are not handed to the parser (libphonenumber's own limit).
const MAX_PHONE_INPUT_CHARS: usize = 250;

/// Phone rule: read the number, in national format using `default_region` (an ISO 3166-1 alpha-2
/// code, normally the address country) when it has no `+`, and write it in E.164
/// (`+14155552671`). Empty → `None`.
///
/// When it cannot be read as a number the trimmed value is kept with [`Warning::PhoneUnparsed`];
/// when it can be read but is not a valid number for its country (wrong length, unassigned range)
/// the trimmed value is kept with [`Warning::PhoneInvalid`], because an E.164 rendering of a wrong
/// number would look authoritative. An extension cannot be written in E.164: it is dropped with
/// [`Warning::PhoneExtensionDropped`].
pub fn normalize_phone(raw: &str, default_region: Option<&str>) -> (Option<String>, Option<Warning>) {
    let Some(trimmed) = clean_text(raw) else {
        return (None, None);
    };
    if trimmed.chars().count() > MAX_PHONE_INPUT_CHARS {
        return (Some(trimmed), Some(Warning::PhoneUnparsed));
    }
    // A number written with its country calling code is read without the address country: the
    // parser would otherwise apply that country's national rules to it (`+44 (0) 20 …` read with
    // `US` is refused, though the `(0)` is the UK's trunk prefix, dropped in international form).
    let region = if trimmed.starts_with('+') {
        None
    } else {
        default_region.and_then(|r| r.trim().to_ascii_uppercase().parse::<PhoneRegion>().ok())
    };
    let Some(number) = parse_phone(region, &trimmed) else {
        return (Some(trimmed), Some(Warning::PhoneUnparsed));
    };
    if !number.is_valid() {
        return (Some(trimmed), Some(Warning::PhoneInvalid));
    }
    let e164 = number.format().mode(Mode::E164).to_string();
    // The output must read back as itself, or re-normalising it would change it.
    let reads_back = parse_phone(None, &e164)
        .is_some_and(|again| again.is_valid() && again.format().mode(Mode::E164).to_string() == e164);
    if !reads_back {
        return (Some(trimmed), Some(Warning::PhoneInvalid));
    }
    let warning = number
        .extension()
        .is_some()
        .then_some(Warning::PhoneExtensionDropped);
    (Some(e164), warning)
}

/// The parser is third-party code fed with whatever customers type. A panic in it must not take
/// the stage down (the record would come back after the restart and do it again), so a panic
/// counts as "could not be parsed".
fn parse_phone(region: Option<PhoneRegion>, text: &str) -> Option<PhoneNumber> {
    panic::catch_unwind(AssertUnwindSafe(|| phonenumber::parse(region, text).ok()))
        .ok()
        .flatten()
}

// ---------------------------------------------------------------------------------------------
// Name
// ---------------------------------------------------------------------------------------------

/// A name split for a Dataverse contact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameParts {
    /// Given names (all but the family name); `None` for a one-word or unsplittable name.
    pub first: Option<String>,
    /// Family name, with its particles (`van Beethoven`) and generational suffix (`King Jr.`).
    pub last: Option<String>,
    /// The whole name with whitespace collapsed.
    pub full: Option<String>,
}

/// Lower-case words that belong to the family name that follows them.
const NAME_PARTICLES: &[&str] = &[
    "al", "bin", "binti", "bint", "da", "das", "de", "degli", "dei", "del", "della", "delle", "der", "di",
    "do", "dos", "du", "el", "ibn", "la", "le", "les", "lo", "st", "st.", "ten", "ter", "van", "von", "zu",
    "zum", "zur",
];

/// Generational suffixes (compared without dots, case-insensitively); they stay with the last name.
const NAME_SUFFIXES: &[&str] = &["jr", "jnr", "sr", "snr", "ii", "iii", "iv"];

/// Name rule. Whitespace is collapsed; then:
///
/// * one word → `last` only (a Dataverse contact needs a last name): `Cher` → last `Cher`;
/// * several words → the last word is the family name and everything before it the given names:
///   `Mary Ann Smith` → first `Mary Ann`, last `Smith`. Particles before the family name join it:
///   `Ludwig van Beethoven` → first `Ludwig`, last `van Beethoven` (the first word is never taken
///   as a particle: `Van Morrison` → first `Van`). A generational suffix joins it too:
///   `Martin Luther King Jr.` → first `Martin Luther`, last `King Jr.`;
/// * a comma means `Last, First`: `Smith, John` → first `John`, last `Smith`, and is how a compound
///   family name is written unambiguously (`García Márquez, Gabriel`). `John Smith, Jr.` is a
///   suffix, not a comma form;
/// * a name containing Chinese, Japanese or Korean characters is not split (family name first,
///   often without spaces): `山田太郎` → last `山田太郎`.
pub fn split_name(raw: &str) -> NameParts {
    let Some(full) = clean_line(raw) else {
        return NameParts::default();
    };
    let (first, last) = if full.chars().any(is_cjk) {
        (None, Some(full.clone()))
    } else if full.contains(',') {
        split_comma_form(&full)
    } else {
        split_words(&full)
    };
    NameParts {
        first,
        last,
        full: Some(full),
    }
}

fn split_comma_form(full: &str) -> (Option<String>, Option<String>) {
    let mut parts: Vec<String> = full.split(',').filter_map(clean_line).collect();
    let mut suffixes = Vec::new();
    while parts.len() > 1 && parts.last().is_some_and(|p| is_suffix(p)) {
        suffixes.extend(parts.pop());
    }
    suffixes.reverse();
    let (first, last) = match parts.as_slice() {
        [] => (None, None),
        [only] => split_words(only),
        [last, rest @ ..] => (Some(rest.join(" ")), Some(last.clone())),
    };
    let last = last.map(|l| std::iter::once(l).chain(suffixes).collect::<Vec<_>>().join(" "));
    (first, last)
}

/// Split a collapsed, comma-free name into given names and family name.
fn split_words(name: &str) -> (Option<String>, Option<String>) {
    let words: Vec<&str> = name.split(' ').collect();
    if words.len() < 2 {
        return (None, Some(name.to_owned()));
    }
    // Peel generational suffixes, leaving at least two words.
    let mut end = words.len();
    while end > 2 && is_suffix(words[end - 1]) {
        end -= 1;
    }
    // The family name starts at the last word before the suffixes, moved left over particles,
    // never onto the first word.
    let mut start = end - 1;
    while start > 1 && is_particle(words[start - 1]) {
        start -= 1;
    }
    (Some(words[..start].join(" ")), Some(words[start..].join(" ")))
}

fn is_particle(word: &str) -> bool {
    let lower = word.to_lowercase();
    NAME_PARTICLES.contains(&lower.as_str())
}

fn is_suffix(word: &str) -> bool {
    let bare: String = word
        .chars()
        .filter(|&c| c != '.')
        .collect::<String>()
        .to_lowercase();
    NAME_SUFFIXES.contains(&bare.as_str())
}

/// Han, Hiragana, Katakana, Hangul and Bopomofo: scripts whose names are written family name
/// first, usually without spaces.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF       // Hangul Jamo
        | 0x2E80..=0x2FDF     // CJK radicals, Kangxi radicals
        | 0x3040..=0x30FF     // Hiragana, Katakana
        | 0x3100..=0x318F     // Bopomofo, Hangul compatibility Jamo
        | 0x31A0..=0x31FF     // Bopomofo extended, CJK strokes, Katakana extensions
        | 0x3400..=0x4DBF     // CJK extension A
        | 0x4E00..=0x9FFF     // CJK unified ideographs
        | 0xA960..=0xA97F     // Hangul Jamo extended A
        | 0xAC00..=0xD7FF     // Hangul syllables, Jamo extended B
        | 0xF900..=0xFAFF     // CJK compatibility ideographs
        | 0xFF65..=0xFFDC     // half-width Katakana and Hangul
        | 0x20000..=0x3134F   // CJK extensions B to G
    )
}

// ---------------------------------------------------------------------------------------------
// Country
// ---------------------------------------------------------------------------------------------

/// A country: its ISO 3166-1 alpha-2 code and its English short name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Country {
    /// Upper-case alpha-2, e.g. `GB`.
    pub code: &'static str,
    /// ISO 3166-1 English short name, e.g. `United Kingdom of Great Britain and Northern Ireland`.
    pub name: &'static str,
}

/// Kosovo's user-assigned code: not in ISO 3166-1, but used by Stripe, the EU and libphonenumber.
const KOSOVO: Country = Country {
    code: "XK",
    name: "Kosovo",
};

/// Country rule: trim and upper-case, then look up an ISO 3166-1 alpha-2 code (`us` → `US`,
/// United States of America). Also accepted: an alpha-3 code (`GBR` → `GB`), `UK` (reserved by ISO
/// for the United Kingdom) → `GB`, and `XK` (Kosovo). Empty → `None`. Anything else → `None` with
/// [`Warning::CountryUnknown`]: the code field promises ISO 3166-1, so an unknown value is not
/// passed on as if it were one.
pub fn normalize_country(raw: &str) -> (Option<Country>, Option<Warning>) {
    let Some(trimmed) = clean_text(raw) else {
        return (None, None);
    };
    // ASCII only: `ß`.to_uppercase() is `SS`, which is South Sudan.
    let upper = trimmed.to_ascii_uppercase();
    let iso = match upper.len() {
        2 => rust_iso3166::from_alpha2(if upper == "UK" { "GB" } else { &upper }),
        3 => rust_iso3166::from_alpha3(&upper),
        _ => None,
    };
    let country = iso
        .map(|c| Country {
            code: c.alpha2,
            name: c.name,
        })
        .or_else(|| (upper == KOSOVO.code).then_some(KOSOVO));
    match country {
        Some(country) => (Some(country), None),
        None => (None, Some(Warning::CountryUnknown)),
    }
}

#[cfg(test)]
mod tests {
    //! Property tests: normalisation never panics and is idempotent. The tables live in
    //! `tests/normalize_table.rs`.

    use proptest::prelude::*;

    use super::*;

    const EVENT_TYPES: &[&str] = &[CUSTOMER_CREATED, CUSTOMER_UPDATED, CUSTOMER_DELETED];

    /// Arbitrary text, biased towards what breaks normalisers: spaces of every kind, case pairs,
    /// `@`, `,`, `+`, digits, particles, CJK, combining marks.
    fn messy() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[ \t\n\u{00A0}\u{200B}\u{3000}a-zA-Z0-9@.,+()\\-_'ßİΣςσ山田太郎é\u{0301}]{0,24}",
            "[ ]{0,2}(van|de|la|Jr\\.|III|Smith|Ann|José|,|山田)( {1,3}(van|de|la|Jr\\.|III|Smith|Ann|José|,|山田)){0,4}[ ]{0,2}",
            "[ ]{0,2}[A-Za-z0-9._%+\\-]{0,10}@[A-Za-z0-9\\-]{0,8}(\\.[A-Za-z]{0,4}){0,2}[ ]{0,2}",
        ]
    }

    /// Phone-like text: digits and separators, sometimes with a `+`, an `00` or an extension.
    fn phoneish() -> impl Strategy<Value = String> {
        prop_oneof![
            "[+]?[0-9 ().\\-]{0,22}",
            "(\\+|00|011)?[1-9][0-9]{0,3}[ \\-]?[0-9]{2,12}( (ext\\.?|x) ?[0-9]{1,5})?",
            // Shaped like real numbers, so the valid-number paths are exercised too.
            "(\\+1 ?)?\\(?[2-9][0-9]{2}\\)? ?[2-9][0-9]{2}[ \\-]?[0-9]{4}( ext\\. ?[0-9]{1,4})?",
            "(\\+(33|44|49|39|81) ?|0)[1-9]( ?[0-9]{2}){3,5}",
            messy(),
        ]
    }

    fn country() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("US".to_owned()),
            Just(" gb ".to_owned()),
            Just("fr".to_owned()),
            Just("DE".to_owned()),
            Just("IT".to_owned()),
            Just("JP".to_owned()),
            Just("BR".to_owned()),
            Just("IN".to_owned()),
            Just("XK".to_owned()),
            Just("UK".to_owned()),
            Just("USA".to_owned()),
            Just("XX".to_owned()),
            "[a-zA-Z ]{0,4}",
            messy(),
        ]
    }

    fn opt<S: Strategy<Value = String>>(s: S) -> impl Strategy<Value = Option<String>> {
        proptest::option::weighted(0.8, s)
    }

    fn address() -> impl Strategy<Value = StripeAddress> {
        (
            opt(messy()),
            opt(messy()),
            opt(messy()),
            opt(messy()),
            opt(messy()),
            opt(country()),
        )
            .prop_map(
                |(line1, line2, city, state, postal_code, country)| StripeAddress {
                    line1,
                    line2,
                    city,
                    state,
                    postal_code,
                    country,
                },
            )
    }

    fn stripe_customer() -> impl Strategy<Value = StripeCustomer> {
        (
            opt(messy()),
            (opt(messy()), opt(messy()), opt(phoneish()), opt(messy())),
            proptest::option::of(address()),
            proptest::option::of((opt(messy()), opt(phoneish()), proptest::option::of(address()))),
            proptest::option::of(proptest::collection::btree_map(messy(), messy(), 0..3)),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(
                |(id, (name, email, phone, description), address, shipping, metadata, deleted)| {
                    StripeCustomer {
                        id,
                        object: None,
                        name,
                        email,
                        phone,
                        description,
                        address,
                        shipping: shipping.map(|(name, phone, address)| StripeShipping {
                            name,
                            phone,
                            address,
                        }),
                        metadata,
                        livemode: None,
                        deleted,
                    }
                },
            )
    }

    fn source_event(event_type: &str) -> SourceEvent<'_> {
        SourceEvent {
            id: "evt_1",
            event_type,
            created: 1_700_000_000,
            livemode: false,
        }
    }

    /// JSON values of every shape, to feed into the event parser as `data.object` and elsewhere.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            messy().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("id".to_owned()),
                            Just("name".to_owned()),
                            Just("email".to_owned()),
                            Just("phone".to_owned()),
                            Just("address".to_owned()),
                            Just("shipping".to_owned()),
                            Just("metadata".to_owned()),
                            Just("country".to_owned()),
                            Just("object".to_owned()),
                            messy(),
                        ],
                        inner
                    ),
                    0..8
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn field_rules_never_panic_and_are_idempotent(s in messy(), p in phoneish(), region in opt(country())) {
            let (email, w) = normalize_email(&s);
            if let Some(email) = &email {
                prop_assert_eq!(normalize_email(email), (Some(email.clone()), w));
            }

            let region = region.as_deref().and_then(|r| normalize_country(r).0).map(|c| c.code);
            for raw in [&s, &p] {
                let (phone, w) = normalize_phone(raw, region);
                if let Some(phone) = &phone {
                    let again = normalize_phone(phone, region);
                    prop_assert_eq!(&again.0, &Some(phone.clone()));
                    if w != Some(Warning::PhoneExtensionDropped) {
                        prop_assert_eq!(again.1, w);
                    }
                }
            }

            let name = split_name(&s);
            // No last name only when there is no name, or nothing but commas.
            if name.last.is_none() {
                let only_commas = |f: &str| f.split(',').all(|p| clean_line(p).is_none());
                prop_assert!(name.full.as_deref().is_none_or(only_commas), "{:?}", name);
            }
            for part in [&name.first, &name.last, &name.full].into_iter().flatten() {
                prop_assert_eq!(clean_line(part), Some(part.clone()));
            }

            let (country, w) = normalize_country(&s);
            if let Some(country) = country {
                prop_assert_eq!(normalize_country(country.code), (Some(country), None));
                prop_assert_eq!(w, None);
            }
        }

        #[test]
        fn normalize_is_idempotent(c in stripe_customer(), t in proptest::sample::select(EVENT_TYPES)) {
            match normalize_customer(&c, source_event(t)) {
                Ok(normalized) => {
                    prop_assert_eq!(renormalize(&normalized), normalized.clone());
                    if normalized.op == CustomerOp::Upsert {
                        prop_assert!(normalized.last_name.is_some());
                    }
                    for w in &normalized.warnings {
                        prop_assert!(Warning::ALL.iter().any(|known| known.as_str() == w));
                    }
                }
                Err(e) => prop_assert_eq!(e, NormalizeError::MissingCustomerId),
            }
        }

        #[test]
        fn event_body_never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..256), t in proptest::sample::select(EVENT_TYPES)) {
            let _ = customer_from_event_body(&body, source_event(t));
        }

        #[test]
        fn event_body_never_panics_on_json(object in json(), root_extra in json(), t in proptest::sample::select(EVENT_TYPES)) {
            let bodies = [
                serde_json::json!({ "id": "evt_1", "type": t, "data": { "object": object.clone() } }),
                serde_json::json!({ "data": root_extra }),
                object,
            ];
            for body in bodies {
                let bytes = serde_json::to_vec(&body).expect("a Value serialises");
                if let Ok(Some(c)) = customer_from_event_body(&bytes, source_event(t)) {
                    prop_assert_eq!(renormalize(&c), c);
                }
            }
        }
    }
}
