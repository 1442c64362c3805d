//! Table tests for every normalisation rule (`NORMALIZATION.md`), with the messy values real
//! Stripe accounts hold, and for the event parser's outcomes and errors.

use std::collections::BTreeMap;

use enricher::normalize::{
    Country, NameParts, NormalizeError, SourceEvent, StripeAddress, StripeCustomer, StripeShipping, Warning,
    customer_from_event_body, customer_from_stripe_event, normalize_country, normalize_customer,
    normalize_email, normalize_phone, renormalize, split_name,
};
use schemas::{Customer, CustomerOp, StripeEvent};

fn event(event_type: &str) -> SourceEvent<'_> {
    SourceEvent {
        id: "evt_1NvJ2h",
        event_type,
        created: 1_700_000_123,
        livemode: true,
    }
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

/// An UPSERT with every optional field empty, to be filled in by each test.
fn upsert(id: &str, event_type: &str) -> Customer {
    Customer {
        op: CustomerOp::Upsert,
        ..Customer::deletion(id, "evt_1NvJ2h", event_type, 1_700_000_123, true)
    }
}

fn body(event_type: &str, object: &str) -> Vec<u8> {
    format!(r#"{{"id":"evt_1NvJ2h","object":"event","type":"{event_type}","data":{{"object":{object}}}}}"#)
        .into_bytes()
}

/// Normalise a customer object received in a `customer.updated` event.
fn updated(object: &str) -> Customer {
    customer_from_event_body(&body("customer.updated", object), event("customer.updated"))
        .expect("normalises")
        .expect("is a customer event")
}

// ---------------------------------------------------------------------------------------------
// Email
// ---------------------------------------------------------------------------------------------

#[test]
fn email_table() {
    use Warning::EmailInvalid;
    let cases: &[(&str, Option<&str>, Option<Warning>)] = &[
        ("  John.Doe@Example.COM ", Some("john.doe@example.com"), None),
        ("JANE@EXAMPLE.CO.UK\u{200B}", Some("jane@example.co.uk"), None),
        (
            "\u{FEFF}billing+stripe@acme.io\n",
            Some("billing+stripe@acme.io"),
            None,
        ),
        ("ÉLODIE@Exämple.FR", Some("élodie@exämple.fr"), None),
        ("o'brien@example.ie", Some("o'brien@example.ie"), None),
        ("", None, None),
        ("   \t ", None, None),
        ("not-an-email", Some("not-an-email"), Some(EmailInvalid)),
        (
            "John Doe <John@Example.com>",
            Some("john doe <john@example.com>"),
            Some(EmailInvalid),
        ),
        ("john@localhost", Some("john@localhost"), Some(EmailInvalid)),
        (
            "john..doe@example.com",
            Some("john..doe@example.com"),
            Some(EmailInvalid),
        ),
        ("john@example..com", Some("john@example..com"), Some(EmailInvalid)),
        ("john@@example.com", Some("john@@example.com"), Some(EmailInvalid)),
        ("@example.com", Some("@example.com"), Some(EmailInvalid)),
        ("john@example.c", Some("john@example.c"), Some(EmailInvalid)),
        ("john@-example.com", Some("john@-example.com"), Some(EmailInvalid)),
        ("john@10.0.0.1", Some("john@10.0.0.1"), Some(EmailInvalid)),
    ];
    for &(raw, want, warning) in cases {
        assert_eq!(
            normalize_email(raw),
            (want.map(str::to_owned), warning),
            "email {raw:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Phone
// ---------------------------------------------------------------------------------------------

#[test]
fn phone_table() {
    use Warning::{PhoneExtensionDropped, PhoneInvalid, PhoneUnparsed};
    // (raw, default region, phone, warning)
    type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<Warning>);
    let cases: &[Case] = &[
        // National formats, read with the address country.
        ("(415) 555-2671", Some("US"), Some("+14155552671"), None),
        ("415.555.2671", Some("us"), Some("+14155552671"), None),
        ("1-800-FLOWERS", Some("US"), Some("+18003569377"), None),
        ("020 7946 0958", Some("GB"), Some("+442079460958"), None),
        ("06 12 34 56 78", Some("FR"), Some("+33612345678"), None),
        ("030 901820", Some("DE"), Some("+4930901820"), None),
        // International formats: the region does not matter.
        ("+44 20 7946 0958", None, Some("+442079460958"), None),
        ("+44 20 7946 0958", Some("US"), Some("+442079460958"), None),
        ("+44 (0) 20 7946 0958", None, Some("+442079460958"), None),
        ("+44 (0) 20 7946 0958", Some("US"), Some("+442079460958"), None),
        ("+44 (0) 20 7946 0958", Some("FR"), Some("+442079460958"), None),
        ("+1 415-555-2671", Some("FR"), Some("+14155552671"), None),
        ("011 44 20 7946 0958", Some("US"), Some("+442079460958"), None),
        ("0044 20 7946 0958", Some("FR"), Some("+442079460958"), None),
        ("tel:+1-415-555-2671", None, Some("+14155552671"), None),
        ("  +14155552671  ", None, Some("+14155552671"), None),
        // Extensions cannot be written in E.164.
        (
            "(415) 555-2671 ext. 12",
            Some("US"),
            Some("+14155552671"),
            Some(PhoneExtensionDropped),
        ),
        // Not a number at all: kept as typed.
        ("call me", Some("US"), Some("call me"), Some(PhoneUnparsed)),
        ("n/a", None, Some("n/a"), Some(PhoneUnparsed)),
        // National format without a country to read it with.
        ("415 555 2671", None, Some("415 555 2671"), Some(PhoneUnparsed)),
        (
            "415 555 2671",
            Some("XX"),
            Some("415 555 2671"),
            Some(PhoneUnparsed),
        ),
        // A number, but not a valid one: kept as typed.
        ("123", Some("US"), Some("123"), Some(PhoneInvalid)),
        ("+1 555 0100", None, Some("+1 555 0100"), Some(PhoneInvalid)),
        ("06 12 34", Some("FR"), Some("06 12 34"), Some(PhoneInvalid)),
        ("", Some("US"), None, None),
        (" \t", Some("US"), None, None),
    ];
    for &(raw, region, want, warning) in cases {
        assert_eq!(
            normalize_phone(raw, region),
            (want.map(str::to_owned), warning),
            "phone {raw:?} in {region:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Name
// ---------------------------------------------------------------------------------------------

#[test]
fn name_table() {
    let cases: &[(&str, Option<&str>, Option<&str>)] = &[
        // (raw, first, last); full is checked below.
        ("John Smith", Some("John"), Some("Smith")),
        ("  Mary   Ann  Smith ", Some("Mary Ann"), Some("Smith")),
        ("\tJOHN\nDOE ", Some("JOHN"), Some("DOE")),
        ("José María García", Some("José María"), Some("García")),
        ("Cher", None, Some("Cher")),
        ("Ludwig van Beethoven", Some("Ludwig"), Some("van Beethoven")),
        ("Vincent Van Gogh", Some("Vincent"), Some("Van Gogh")),
        ("Jean de la Fontaine", Some("Jean"), Some("de la Fontaine")),
        (
            "Johannes Diderik van der Waals",
            Some("Johannes Diderik"),
            Some("van der Waals"),
        ),
        ("Leonardo da Vinci", Some("Leonardo"), Some("da Vinci")),
        (
            "Luiz Inácio Lula da Silva",
            Some("Luiz Inácio Lula"),
            Some("da Silva"),
        ),
        ("Mohammed bin Salman", Some("Mohammed"), Some("bin Salman")),
        ("Ahmad ibn Hanbal", Some("Ahmad"), Some("ibn Hanbal")),
        ("Ursula von der Leyen", Some("Ursula"), Some("von der Leyen")),
        ("Van Morrison", Some("Van"), Some("Morrison")),
        ("De Niro", Some("De"), Some("Niro")),
        ("Martin Luther King Jr.", Some("Martin Luther"), Some("King Jr.")),
        ("Henry Ford II", Some("Henry"), Some("Ford II")),
        ("Smith, John", Some("John"), Some("Smith")),
        ("  smith ,   john  ", Some("john"), Some("smith")),
        ("García Márquez, Gabriel", Some("Gabriel"), Some("García Márquez")),
        ("van Beethoven, Ludwig", Some("Ludwig"), Some("van Beethoven")),
        ("John Smith, Jr.", Some("John"), Some("Smith Jr.")),
        (
            "King, Martin Luther, Jr.",
            Some("Martin Luther"),
            Some("King Jr."),
        ),
        ("Smith,", None, Some("Smith")),
        ("山田太郎", None, Some("山田太郎")),
        ("山田\u{3000}太郎", None, Some("山田 太郎")),
        ("王小明", None, Some("王小明")),
        ("김민준", None, Some("김민준")),
        ("Иван Петров", Some("Иван"), Some("Петров")),
        ("", None, None),
        ("   ", None, None),
    ];
    for &(raw, first, last) in cases {
        let got = split_name(raw);
        let full = raw.split_whitespace().collect::<Vec<_>>().join(" ");
        let want = NameParts {
            first: first.map(str::to_owned),
            last: last.map(str::to_owned),
            full: (!full.is_empty()).then_some(full),
        };
        assert_eq!(got, want, "name {raw:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Country
// ---------------------------------------------------------------------------------------------

#[test]
fn country_table() {
    let us = Country {
        code: "US",
        name: "United States of America",
    };
    let gb = Country {
        code: "GB",
        name: "United Kingdom of Great Britain and Northern Ireland",
    };
    let de = Country {
        code: "DE",
        name: "Germany",
    };
    let xk = Country {
        code: "XK",
        name: "Kosovo",
    };
    let unknown = Some(Warning::CountryUnknown);
    let cases: &[(&str, Option<Country>, Option<Warning>)] = &[
        ("us", Some(us), None),
        ("US", Some(us), None),
        (" gb ", Some(gb), None),
        ("UK", Some(gb), None),
        ("DEU", Some(de), None),
        ("xk", Some(xk), None),
        ("XX", None, unknown),
        ("United States", None, unknown),
        ("U.S.", None, unknown),
        ("ß", None, unknown),
        ("", None, None),
        ("  ", None, None),
    ];
    for &(raw, want, warning) in cases {
        assert_eq!(normalize_country(raw), (want, warning), "country {raw:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Whole customers
// ---------------------------------------------------------------------------------------------

#[test]
fn realistic_customer_updated() {
    let object = r#"{
        "id": "cus_PzK3aBc123",
        "object": "customer",
        "address": {"city": " San  Francisco ", "country": "us", "line1": "510 Townsend St",
                    "line2": "", "postal_code": "94103 ", "state": "CA"},
        "balance": 0,
        "created": 1699999999,
        "currency": "usd",
        "default_source": null,
        "delinquent": false,
        "description": "  VIP since 2019\nprefers email  ",
        "discount": null,
        "email": "  John.Doe@Example.COM ",
        "invoice_prefix": "A1B2C3D4",
        "invoice_settings": {"custom_fields": null, "default_payment_method": null, "footer": null},
        "livemode": true,
        "metadata": {"crm_tier": "gold", "Source": " Web "},
        "name": "  John   Paul  Doe ",
        "next_invoice_sequence": 1,
        "phone": "(415) 555-2671",
        "preferred_locales": ["en-US"],
        "shipping": null,
        "tax_exempt": "none",
        "test_clock": null
    }"#;
    let want = Customer {
        email: s("john.doe@example.com"),
        first_name: s("John Paul"),
        last_name: s("Doe"),
        full_name: s("John Paul Doe"),
        phone: s("+14155552671"),
        description: s("VIP since 2019\nprefers email"),
        address_line1: s("510 Townsend St"),
        address_city: s("San Francisco"),
        address_state: s("CA"),
        address_postal_code: s("94103"),
        address_country_code: s("US"),
        address_country_name: s("United States of America"),
        metadata: BTreeMap::from([
            ("Source".to_owned(), " Web ".to_owned()),
            ("crm_tier".to_owned(), "gold".to_owned()),
        ]),
        ..upsert("cus_PzK3aBc123", "customer.updated")
    };
    assert_eq!(updated(object), want);
}

#[test]
fn unknown_fields_and_nulls_everywhere() {
    let body = br#"{
        "id": "evt_1NvJ2h", "object": "event", "api_version": null, "created": 1700000123,
        "data": {
            "object": {
                "id": "cus_Nulls", "object": "customer", "address": null, "balance": null,
                "description": null, "email": null, "metadata": null, "name": null, "phone": null,
                "shipping": null, "livemode": null, "deleted": null, "preferred_locales": null,
                "some_future_field": {"nested": [1, null, {"x": null}]}, "another": 3.5
            },
            "previous_attributes": null
        },
        "livemode": true, "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null},
        "type": "customer.created", "brand_new_top_level_field": [null]
    }"#;
    let got = customer_from_event_body(body, event("customer.created"))
        .unwrap()
        .unwrap();
    let want = Customer {
        last_name: s("cus_Nulls"),
        warnings: vec!["name_missing".to_owned()],
        ..upsert("cus_Nulls", "customer.created")
    };
    assert_eq!(got, want);
}

#[test]
fn minimal_object_and_empty_strings() {
    let got = updated(
        r#"{"id":"cus_1","name":"","email":"  ","phone":" ","description":"  ",
            "address":{"line1":"","line2":null,"city":" ","state":"","postal_code":"","country":""}}"#,
    );
    let want = Customer {
        last_name: s("cus_1"),
        warnings: vec!["name_missing".to_owned()],
        ..upsert("cus_1", "customer.updated")
    };
    assert_eq!(got, want);
}

#[test]
fn last_name_fallbacks() {
    // (object, last_name): email local part first, else the customer id.
    let cases = [
        (r#"{"id":"cus_1","email":"Jane.Roe@Example.com"}"#, "jane.roe"),
        (r#"{"id":"cus_1","email":"not-an-email"}"#, "cus_1"),
        (r#"{"id":"cus_1","email":"@example.com"}"#, "cus_1"),
        (r#"{"id":"cus_1","name":" , ","email":"x@example.com"}"#, "x"),
        (r#"{"id":" cus_2 "}"#, "cus_2"),
    ];
    for (object, last) in cases {
        let got = updated(object);
        assert_eq!(got.last_name.as_deref(), Some(last), "{object}");
        assert_eq!(got.first_name, None, "{object}");
        assert!(got.warnings.contains(&"name_missing".to_owned()), "{object}");
    }
    assert_eq!(updated(r#"{"id":" cus_2 "}"#).customer_id, "cus_2");
}

#[test]
fn address_choice_and_phone_region() {
    let shipping_only = r#"{"id":"cus_1","name":"Ann Lee","phone":"020 7946 0958","address":null,
        "shipping":{"name":"Someone Else","phone":"+33612345678",
                    "address":{"line1":" 10  Downing St ","city":"London","country":" gb ","postal_code":"SW1A 2AA"}}}"#;
    let got = updated(shipping_only);
    assert_eq!(got.address_line1.as_deref(), Some("10 Downing St"));
    assert_eq!(got.address_postal_code.as_deref(), Some("SW1A 2AA"));
    assert_eq!(got.address_country_code.as_deref(), Some("GB"));
    assert_eq!(
        got.phone.as_deref(),
        Some("+442079460958"),
        "read with the shipping country"
    );
    assert_eq!(
        (got.first_name.as_deref(), got.last_name.as_deref()),
        (Some("Ann"), Some("Lee"))
    );
    assert_eq!(got.warnings, ["address_from_shipping"]);

    // A billing address of empty strings counts as absent.
    let blank_billing = shipping_only.replace(r#""address":null"#, r#""address":{"line1":" ","country":""}"#);
    assert_eq!(updated(&blank_billing), got);

    // Billing with anything in it wins, and is never mixed with shipping.
    let billing_country_only = shipping_only.replace(r#""address":null"#, r#""address":{"country":"FR"}"#);
    let got = updated(&billing_country_only);
    assert_eq!(got.address_country_code.as_deref(), Some("FR"));
    assert_eq!(got.address_country_name.as_deref(), Some("France"));
    assert_eq!(
        (got.address_line1.as_deref(), got.address_city.as_deref()),
        (None, None)
    );
    assert_eq!(
        got.phone.as_deref(),
        Some("020 7946 0958"),
        "020… is not a French number"
    );
    assert_eq!(got.warnings, ["phone_invalid"]);

    // Unknown country: no code, no region for the phone.
    let got = updated(r#"{"id":"cus_1","name":"A B","phone":"(415) 555-2671","address":{"country":"XX"}}"#);
    assert_eq!((got.address_country_code, got.address_country_name), (None, None));
    assert_eq!(got.phone.as_deref(), Some("(415) 555-2671"));
    assert_eq!(got.warnings, ["country_unknown", "phone_unparsed"]);
}

#[test]
fn metadata_kept_nulls_dropped() {
    let got = updated(r#"{"id":"cus_1","name":"A","metadata":{"a":"1","gone":null,"  spaced ":"  kept  "}}"#);
    assert_eq!(
        got.metadata,
        BTreeMap::from([
            ("  spaced ".to_owned(), "  kept  ".to_owned()),
            ("a".to_owned(), "1".to_owned())
        ])
    );
    assert!(updated(r#"{"id":"cus_1","metadata":null}"#).metadata.is_empty());
    assert!(updated(r#"{"id":"cus_1"}"#).metadata.is_empty());
}

#[test]
fn warnings_are_sorted_names_from_the_vocabulary() {
    let got = updated(r#"{"id":"cus_1","email":"nope","phone":"call me","address":{"country":"Narnia"}}"#);
    assert_eq!(
        got.warnings,
        [
            "country_unknown",
            "email_invalid",
            "name_missing",
            "phone_unparsed"
        ]
    );
    let names: Vec<&str> = Warning::ALL.iter().map(|w| w.as_str()).collect();
    assert_eq!(
        names,
        [
            "email_invalid",
            "phone_unparsed",
            "phone_invalid",
            "phone_extension_dropped",
            "country_unknown",
            "name_missing",
            "address_from_shipping"
        ]
    );
}

#[test]
fn livemode_and_source_fields_come_from_the_event() {
    let got = customer_from_event_body(
        &body(
            "customer.created",
            r#"{"id":"cus_1","name":"A","livemode":false}"#,
        ),
        SourceEvent {
            id: "evt_9",
            event_type: "customer.created",
            created: 42,
            livemode: true,
        },
    )
    .unwrap()
    .unwrap();
    assert!(got.livemode);
    assert_eq!(
        (
            got.source_event_id.as_str(),
            got.source_event_type.as_str(),
            got.source_event_created
        ),
        ("evt_9", "customer.created", 42)
    );
}

// ---------------------------------------------------------------------------------------------
// Deletions and event types
// ---------------------------------------------------------------------------------------------

#[test]
fn customer_deleted_is_a_deletion() {
    let want = Customer::deletion("cus_Gone", "evt_1NvJ2h", "customer.deleted", 1_700_000_123, true);
    let bodies = [
        r#"{"id":"cus_Gone","object":"customer","deleted":true}"#,
        r#"{"id":"cus_Gone","object":"customer","name":"Jane Roe","email":"jane@example.com","metadata":{"a":"b"}}"#,
        // Only the id is read: a malformed rest does not stop a deletion.
        r#"{"id":"cus_Gone","email":5,"address":"nowhere"}"#,
    ];
    for object in bodies {
        let got = customer_from_event_body(&body("customer.deleted", object), event("customer.deleted"));
        assert_eq!(got, Ok(Some(want.clone())), "{object}");
    }
}

#[test]
fn deleted_flag_does_not_override_the_event_type() {
    let got = updated(r#"{"id":"cus_1","name":"Jane Roe","deleted":true}"#);
    assert_eq!(got.op, CustomerOp::Upsert);
    assert_eq!(got.last_name.as_deref(), Some("Roe"));
}

#[test]
fn other_event_types_are_skipped() {
    for t in [
        "invoice.paid",
        "charge.succeeded",
        "customer.subscription.created",
        "customer.source.updated",
        "customer.discount.deleted",
        "customer.tax_id.created",
        "Customer.Updated",
        "",
    ] {
        assert_eq!(
            customer_from_event_body(b"not even json", event(t)),
            Ok(None),
            "{t}"
        );
        assert_eq!(
            customer_from_event_body(&body(t, r#"{"id":"in_1"}"#), event(t)),
            Ok(None),
            "{t}"
        );
        assert_eq!(
            normalize_customer(
                &StripeCustomer {
                    id: s("cus_1"),
                    ..Default::default()
                },
                event(t)
            ),
            Err(NormalizeError::UnsupportedEventType(t.to_owned()))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn error_table() {
    let not_json =
        |e: &Result<Option<Customer>, NormalizeError>| matches!(e, Err(NormalizeError::NotJson(_)));
    for raw in [
        &b""[..],
        b"not json",
        b"{\"data\":",
        b"\xff\xfe{}",
        b"{\"id\":\"\xff\"}",
    ] {
        let got = customer_from_event_body(raw, event("customer.updated"));
        assert!(not_json(&got), "{raw:?}: {got:?}");
    }

    let body_not_object = NormalizeError::NotAnObject { what: "event body" };
    let object_not_object = NormalizeError::NotAnObject { what: "data.object" };
    let cases: &[(&str, &str, NormalizeError)] = &[
        ("customer.updated", "[1,2]", body_not_object.clone()),
        ("customer.updated", "\"cus_1\"", body_not_object.clone()),
        ("customer.deleted", "null", body_not_object),
        ("customer.updated", "{}", object_not_object.clone()),
        ("customer.updated", r#"{"data":null}"#, object_not_object.clone()),
        (
            "customer.updated",
            r#"{"data":{"object":"cus_1"}}"#,
            object_not_object.clone(),
        ),
        ("customer.deleted", r#"{"data":{"object":[]}}"#, object_not_object),
        (
            "customer.updated",
            r#"{"data":{"object":{"email":"a@b.co"}}}"#,
            NormalizeError::MissingCustomerId,
        ),
        (
            "customer.created",
            r#"{"data":{"object":{"id":null}}}"#,
            NormalizeError::MissingCustomerId,
        ),
        (
            "customer.created",
            r#"{"data":{"object":{"id":"  "}}}"#,
            NormalizeError::MissingCustomerId,
        ),
        (
            "customer.updated",
            r#"{"data":{"object":{"id":42}}}"#,
            NormalizeError::MissingCustomerId,
        ),
        (
            "customer.deleted",
            r#"{"data":{"object":{}}}"#,
            NormalizeError::MissingCustomerId,
        ),
    ];
    for (t, raw, want) in cases {
        assert_eq!(
            customer_from_event_body(raw.as_bytes(), event(t)),
            Err(want.clone()),
            "{raw}"
        );
    }

    for object in [
        r#"{"id":"cus_1","email":5}"#,
        r#"{"id":"cus_1","metadata":{"n":1}}"#,
        r#"{"id":"cus_1","address":"somewhere"}"#,
        r#"{"id":"cus_1","object":"discount"}"#,
    ] {
        let got = customer_from_event_body(&body("customer.updated", object), event("customer.updated"));
        assert!(
            matches!(got, Err(NormalizeError::InvalidCustomer(_))),
            "{object}: {got:?}"
        );
    }

    assert_eq!(
        normalize_customer(&StripeCustomer::default(), event("customer.created")),
        Err(NormalizeError::MissingCustomerId)
    );
}

#[test]
fn error_classes_are_stable() {
    let cases = [
        (NormalizeError::NotJson("x".into()), "not_json"),
        (
            NormalizeError::NotAnObject { what: "event body" },
            "not_an_object",
        ),
        (NormalizeError::InvalidCustomer("x".into()), "invalid_customer"),
        (NormalizeError::MissingCustomerId, "missing_customer_id"),
        (
            NormalizeError::UnsupportedEventType("x".into()),
            "unsupported_event_type",
        ),
    ];
    for (e, class) in cases {
        assert_eq!(e.class(), class);
        assert!(!e.to_string().is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points and re-normalisation
// ---------------------------------------------------------------------------------------------

#[test]
fn from_a_stripe_events_record() {
    let record = StripeEvent {
        event_id: "evt_1NvJ2h".into(),
        event_type: "customer.created".into(),
        created: 1_700_000_123,
        api_version: Some("2025-04-30.basil".into()),
        livemode: true,
        account: None,
        object_id: Some("cus_1".into()),
        object_type: Some("customer".into()),
        request_id: None,
        idempotency_key: None,
        raw_body: body("customer.created", r#"{"id":"cus_1","name":"Cher"}"#),
        signature_header: "t=1,v1=00".into(),
        received_at: 1_700_000_123_456,
        source: Some("webhook".into()),
    };
    let got = customer_from_stripe_event(&record).unwrap().unwrap();
    assert_eq!(
        got,
        Customer {
            last_name: s("Cher"),
            full_name: s("Cher"),
            ..upsert("cus_1", "customer.created")
        }
    );
}

#[test]
fn normalize_customer_from_a_struct() {
    let c = StripeCustomer {
        id: s("cus_1"),
        name: s("Ludwig van Beethoven"),
        phone: s("0228 981 750"),
        shipping: Some(StripeShipping {
            name: None,
            phone: None,
            address: Some(StripeAddress {
                city: s("Bonn"),
                country: s("de"),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let got = normalize_customer(&c, event("customer.created")).unwrap();
    assert_eq!(
        (got.first_name.as_deref(), got.last_name.as_deref()),
        (Some("Ludwig"), Some("van Beethoven"))
    );
    assert_eq!(got.phone.as_deref(), Some("+49228981750"));
    assert_eq!(got.address_country_name.as_deref(), Some("Germany"));
    assert_eq!(renormalize(&got), got);
}

#[test]
fn renormalize_applies_the_rules_to_a_hand_made_record() {
    let messy = Customer {
        email: s(" Jane@Example.COM "),
        first_name: s("  Jane  Ann "),
        last_name: s(" van  Roe "),
        full_name: s("Jane Ann  van Roe"),
        phone: s("020 7946 0958"),
        description: s("  note "),
        address_city: s("  London "),
        address_line1: s(""),
        address_country_code: s("gb"),
        address_country_name: s("Britain"),
        warnings: vec![
            "zz_future_note".into(),
            "email_invalid".into(),
            "email_invalid".into(),
        ],
        ..upsert("cus_1", "customer.updated")
    };
    let want = Customer {
        email: s("jane@example.com"),
        first_name: s("Jane Ann"),
        last_name: s("van Roe"),
        full_name: s("Jane Ann van Roe"),
        phone: s("+442079460958"),
        description: s("note"),
        address_city: s("London"),
        address_country_code: s("GB"),
        address_country_name: s("United Kingdom of Great Britain and Northern Ireland"),
        warnings: vec!["email_invalid".into(), "zz_future_note".into()],
        ..upsert("cus_1", "customer.updated")
    };
    assert_eq!(renormalize(&messy), want);
    assert_eq!(renormalize(&want), want);

    let deletion = Customer::deletion("cus_1", "evt_1", "customer.deleted", 1, false);
    assert_eq!(
        renormalize(&Customer {
            email: s("x@y.zz"),
            ..deletion.clone()
        }),
        deletion
    );
}
