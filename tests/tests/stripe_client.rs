//! The Stripe API client (`common::stripe`) against the local fake (`harness::stripe_fake`):
//! pagination, filters, retries, pacing and errors over real HTTP.

use std::time::{Duration, Instant};

use common::{
    config::{HumanDuration, Secret},
    retry::BackoffSettings,
    stripe::{CustomerLookup, EventQuery, StripeClient, StripeError, StripeSettings},
};
use harness::{pipeline::customer_event, stripe_fake::StripeFake};
use serde_json::json;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn settings(fake: &StripeFake) -> StripeSettings {
    fake.client_settings()
}

fn customer(id: &str, created: i64) -> serde_json::Value {
    json!({"id": id, "object": "customer", "created": created, "email": format!("{id}@example.com")})
}

/// `n` customer.created events one second apart, ending 10 minutes ago; every third undelivered.
fn seed_events(fake: &StripeFake, n: usize) -> Vec<String> {
    let start = now() - 600 - n as i64;
    (0..n)
        .map(|i| {
            let id = format!("evt_p{i}");
            let created = start + i as i64;
            fake.add_event(
                customer_event(
                    &id,
                    "customer.created",
                    created,
                    customer(&format!("cus_p{i}"), created),
                ),
                i % 3 != 0,
            )
        })
        .collect()
}

#[tokio::test]
async fn pages_walk_newest_first_with_starting_after_until_has_more_is_false() {
    let fake = StripeFake::start().await.unwrap();
    let ids = seed_events(&fake, 23);
    let mut s = settings(&fake);
    s.page_size = 10;
    let client = StripeClient::new(&s).unwrap();
    let mut pager = client.events(EventQuery::default());
    let mut seen = Vec::new();
    let mut pages = 0;
    while let Some(page) = pager.next_page().await.unwrap() {
        pages += 1;
        seen.extend(page.data.into_iter().map(|e| e.id));
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    assert_eq!(pages, 3);
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].param("starting_after"), None);
    assert_eq!(
        requests[1].param("starting_after"),
        Some(newest_first[9].as_str())
    );
    assert_eq!(
        requests[2].param("starting_after"),
        Some(newest_first[19].as_str())
    );
    assert!(requests.iter().all(|r| r.param("limit") == Some("10")));
}

#[tokio::test]
async fn filters_reach_the_api_and_select_events() {
    let fake = StripeFake::start().await.unwrap();
    let ids = seed_events(&fake, 12);
    let first: serde_json::Value = serde_json::from_str(&fake_event_json(&fake, &ids[0]).await).unwrap();
    let t0 = first["created"].as_i64().unwrap();
    fake.add_event(
        customer_event(
            "evt_other",
            "charge.succeeded",
            t0 + 5,
            json!({"id": "ch_1", "object": "charge"}),
        ),
        false,
    );
    let client = StripeClient::new(&settings(&fake)).unwrap();
    let query = EventQuery {
        created_gte: Some(t0 + 3),
        created_lt: Some(t0 + 9),
        types: vec!["customer.*".into()],
        delivery_success: Some(false),
    };
    let page = client.list_events(&query, None).await.unwrap();
    let got: Vec<&str> = page.data.iter().map(|e| e.id.as_str()).collect();
    // Undelivered are i % 3 == 0: of 3..9, that is 3 and 6, newest first.
    assert_eq!(got, vec!["evt_p6", "evt_p3"]);
    assert!(!page.has_more);
    assert!(
        page.data
            .iter()
            .all(|e| e.pending_webhooks == 1 && e.object_id.is_some())
    );
    let r = fake.requests().pop().unwrap();
    assert_eq!(r.param("created[gte]"), Some((t0 + 3).to_string().as_str()));
    assert_eq!(r.param("created[lt]"), Some((t0 + 9).to_string().as_str()));
    assert_eq!(r.param("type"), Some("customer.*"));
    assert_eq!(r.param("delivery_success"), Some("false"));
}

async fn fake_event_json(fake: &StripeFake, id: &str) -> String {
    reqwest::Client::new()
        .get(format!("{}/v1/events/{id}", fake.url()))
        .basic_auth(fake.api_key(), Some(""))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn rate_limited_requests_are_retried_until_they_pass() {
    let fake = StripeFake::start().await.unwrap();
    seed_events(&fake, 30);
    fake.set_rate_limit(Some(2));
    let mut s = settings(&fake);
    s.page_size = 3;
    s.backoff = BackoffSettings {
        initial: HumanDuration::millis(200),
        max: HumanDuration::millis(800),
    };
    let client = StripeClient::new(&s).unwrap();
    let mut pager = client.events(EventQuery::default());
    let mut n = 0;
    while let Some(page) = pager.next_page().await.unwrap() {
        n += page.data.len();
    }
    assert_eq!(n, 30);
    assert!(
        fake.throttled() > 0,
        "the fake should have throttled a 1000/s client"
    );
}

#[tokio::test]
async fn should_retry_false_is_not_retried_and_true_makes_a_400_retryable() {
    let fake = StripeFake::start().await.unwrap();
    seed_events(&fake, 2);
    let client = StripeClient::new(&settings(&fake)).unwrap();
    fake.fail_next(1, 429, Some(false));
    let err = client
        .list_events(&EventQuery::default(), None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(429), "{err}");
    assert_eq!(
        fake.requests().len(),
        1,
        "Stripe-Should-Retry: false must not be retried"
    );

    fake.fail_next(2, 400, Some(true));
    let page = client.list_events(&EventQuery::default(), None).await.unwrap();
    assert_eq!(page.data.len(), 2);
    assert_eq!(fake.requests().len(), 4);

    // A 400 without the header is final.
    fake.fail_next(1, 400, None);
    assert!(client.list_events(&EventQuery::default(), None).await.is_err());
    assert_eq!(fake.requests().len(), 5);
}

#[tokio::test]
async fn server_errors_are_retried_up_to_max_retries() {
    let fake = StripeFake::start().await.unwrap();
    let mut s = settings(&fake);
    s.max_retries = 2;
    let client = StripeClient::new(&s).unwrap();
    fake.fail_next(5, 500, None);
    let err = client
        .list_events(&EventQuery::default(), None)
        .await
        .unwrap_err();
    match err {
        StripeError::Api {
            status: 500,
            attempts: 3,
            ref kind,
            ..
        } => assert_eq!(kind, "api_error"),
        other => panic!("expected a 500 after 3 attempts, got {other:?}"),
    }
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn a_wrong_key_is_named_without_the_key() {
    let fake = StripeFake::start().await.unwrap();
    let mut s = settings(&fake);
    s.api_key = Secret::new("sk_test_wrongwrongwrong9876");
    let client = StripeClient::new(&s).unwrap();
    let err = client
        .list_events(&EventQuery::default(), None)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StripeError::Unauthorized { .. }), "{err:?}");
    assert!(text.contains("STRIPE_API_KEY"), "{text}");
    assert!(!text.contains("sk_test_wrongwrongwrong9876"), "{text}");
    assert_eq!(fake.requests().len(), 1, "a 401 is not retried");
}

#[tokio::test]
async fn customers_list_skips_deleted_and_lookup_says_deleted() {
    let fake = StripeFake::start().await.unwrap();
    let t = now() - 100;
    fake.put_customer(customer("cus_a", t));
    fake.put_customer(customer("cus_b", t + 1));
    fake.put_customer(customer("cus_c", t + 2));
    fake.delete_customer("cus_b");
    let client = StripeClient::new(&settings(&fake)).unwrap();
    let mut pager = client.customers(Default::default());
    let mut ids = Vec::new();
    while let Some(page) = pager.next_page().await.unwrap() {
        ids.extend(page.data.iter().map(|c| c["id"].as_str().unwrap().to_string()));
    }
    assert_eq!(ids, vec!["cus_c", "cus_a"]);
    assert_eq!(client.customer("cus_b").await.unwrap(), CustomerLookup::Deleted);
    assert_eq!(
        client.customer("cus_nope").await.unwrap(),
        CustomerLookup::Missing
    );
    match client.customer("cus_a").await.unwrap() {
        CustomerLookup::Found(c) => assert_eq!(c["email"], "cus_a@example.com"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn events_past_thirty_days_are_not_listed() {
    let fake = StripeFake::start().await.unwrap();
    let old = now() - 31 * 86_400;
    fake.add_event(
        customer_event("evt_old", "customer.created", old, customer("cus_old", old)),
        false,
    );
    seed_events(&fake, 1);
    let client = StripeClient::new(&settings(&fake)).unwrap();
    let page = client.list_events(&EventQuery::default(), None).await.unwrap();
    assert_eq!(
        page.data.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec!["evt_p0"]
    );
}

#[tokio::test]
async fn requests_are_paced_at_the_configured_rate() {
    let fake = StripeFake::start().await.unwrap();
    let mut s = settings(&fake);
    s.requests_per_second = 10.0;
    let client = StripeClient::new(&s).unwrap();
    let start = Instant::now();
    for _ in 0..6 {
        client.list_events(&EventQuery::default(), None).await.unwrap();
    }
    // Six requests at 10/s: five intervals of 100 ms.
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(fake.throttled(), 0);
}

#[tokio::test]
async fn several_types_match_exactly_and_one_may_be_a_wildcard() {
    let fake = StripeFake::start().await.unwrap();
    let t = now() - 100;
    for (id, kind) in [
        ("evt_a", "customer.created"),
        ("evt_b", "customer.updated"),
        ("evt_c", "customer.deleted"),
    ] {
        fake.add_event(customer_event(id, kind, t, customer("cus_t", t)), false);
    }
    let client = StripeClient::new(&settings(&fake)).unwrap();
    let ids = |page: common::stripe::Page<common::stripe::Event>| {
        page.data.into_iter().map(|e| e.id).collect::<Vec<_>>()
    };
    let q = |types: &[&str]| EventQuery {
        types: types.iter().map(|t| t.to_string()).collect(),
        ..EventQuery::default()
    };
    assert_eq!(
        ids(client.list_events(&q(&["customer.*"]), None).await.unwrap()),
        vec!["evt_c", "evt_b", "evt_a"]
    );
    let two = client
        .list_events(&q(&["customer.created", "customer.deleted"]), None)
        .await
        .unwrap();
    assert_eq!(ids(two), vec!["evt_c", "evt_a"]);
    assert_eq!(
        fake.requests().last().unwrap().param("types[]"),
        Some("customer.created")
    );
    let before = fake.requests().len();
    let err = client
        .list_events(&q(&["customer.*", "charge.*"]), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("wildcard"), "{err}");
    assert_eq!(fake.requests().len(), before, "refused before sending");
}

/// The fake's list rules at the HTTP level, as Stripe documents them: `limit` defaults to 10 and
/// is 1–100; `ending_before` pages towards newer objects; an unknown cursor is 404
/// `resource_missing`; a missing key is 401.
#[tokio::test]
async fn the_fake_paginates_as_stripe_documents() {
    let fake = StripeFake::start().await.unwrap();
    let ids = seed_events(&fake, 15);
    let http = reqwest::Client::new();
    let get = |q: &'static str| {
        http.get(format!("{}/v1/events?{q}", fake.url()))
            .bearer_auth(fake.api_key())
            .send()
    };
    let page: serde_json::Value = get("").await.unwrap().json().await.unwrap();
    assert_eq!(page["object"], "list");
    assert_eq!(page["data"].as_array().unwrap().len(), 10, "default limit");
    assert_eq!(page["has_more"], true);
    assert_eq!(page["data"][0]["id"], ids[14].as_str(), "newest first");

    let r = get("limit=101").await.unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "limit");

    // ending_before evt_p5 with limit 3: the three next newer (p8, p7, p6), newest first, more beyond.
    let r = http
        .get(format!("{}/v1/events?limit=3&ending_before=evt_p5", fake.url()))
        .bearer_auth(fake.api_key())
        .send()
        .await
        .unwrap();
    let page: serde_json::Value = r.json().await.unwrap();
    let got: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec!["evt_p8", "evt_p7", "evt_p6"]);
    assert_eq!(page["has_more"], true);

    let r = get("starting_after=evt_nope").await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "resource_missing");
    assert!(r_has_request_id(&fake).await);

    let r = http
        .get(format!("{}/v1/events", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not provide an API key")
    );
}

async fn r_has_request_id(fake: &StripeFake) -> bool {
    let r = reqwest::Client::new()
        .get(format!("{}/v1/customers/cus_none", fake.url()))
        .bearer_auth(fake.api_key())
        .send()
        .await
        .unwrap();
    r.status() == 404
        && r.headers()
            .get("request-id")
            .is_some_and(|v| v.to_str().unwrap().starts_with("req_"))
}
