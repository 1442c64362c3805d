//! `reconcile` against the whole pipeline, every component a real process: contacts written by
//! signed webhooks through gateway, enricher and sink; Stripe's side from a local fake of its API.
//! A clean state shows no drift; each planted drift (missing, different on either side, deleted
//! in Stripe, unknown to Stripe) is found and nothing else; the JSON says what the table says;
//! `--repair` fixes each through the sink, and a second run finds nothing.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use harness::{
    pipeline::{Pipeline, Stage, customer_event},
    wait_until, workspace_bin,
};
use serde_json::{Value, json};

const STRIPE_KEY: &str = "sk_test_reconcile_component_key";

/// A local stand-in for the two Stripe endpoints the reconciliation reads, as Stripe documents
/// them: `GET /v1/customers` (newest first, `limit`, `starting_after`, `has_more`; deleted
/// customers left out) and `GET /v1/customers/{id}` (the customer, `{"id", "object":
/// "customer", "deleted": true}` for a deleted one, 404 `resource_missing` otherwise), both
/// behind the secret key as a bearer token.
mod stripe_fake {
    use super::*;
    use axum::{
        Json, Router,
        extract::{Path, Query, State},
        http::{HeaderMap, StatusCode},
        routing::get,
    };

    #[derive(Debug, Clone, Default)]
    pub struct Customers {
        /// id → (created, object); `None` for a deleted customer.
        pub rows: BTreeMap<String, (i64, Option<Value>)>,
    }

    pub type Shared = Arc<Mutex<Customers>>;

    type Answer = (StatusCode, Json<Value>);

    fn authorised(headers: &HeaderMap) -> Result<(), Answer> {
        let expected = format!("Bearer {STRIPE_KEY}");
        match headers.get("authorization").and_then(|v| v.to_str().ok()) {
            Some(v) if v == expected => Ok(()),
            _ => Err((
                StatusCode::UNAUTHORIZED,
                Json(
                    json!({"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}}),
                ),
            )),
        }
    }

    async fn list(
        State(db): State<Shared>,
        headers: HeaderMap,
        Query(q): Query<BTreeMap<String, String>>,
    ) -> Answer {
        if let Err(e) = authorised(&headers) {
            return e;
        }
        let limit: usize = q
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(10)
            .clamp(1, 100);
        let db = db.lock().unwrap();
        let mut live: Vec<(i64, &String, &Value)> = db
            .rows
            .iter()
            .filter_map(|(id, (created, object))| object.as_ref().map(|o| (*created, id, o)))
            .collect();
        live.sort_by(|a, b| (b.0, b.1).cmp(&(a.0, a.1)));
        let start = match q.get("starting_after") {
            Some(after) => live
                .iter()
                .position(|(_, id, _)| *id == after)
                .map_or(live.len(), |i| i + 1),
            None => 0,
        };
        let page: Vec<Value> = live
            .iter()
            .skip(start)
            .take(limit)
            .map(|(_, _, o)| (*o).clone())
            .collect();
        let has_more = start + page.len() < live.len();
        (
            StatusCode::OK,
            Json(json!({"object": "list", "url": "/v1/customers", "has_more": has_more, "data": page})),
        )
    }

    async fn retrieve(State(db): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Answer {
        if let Err(e) = authorised(&headers) {
            return e;
        }
        match db.lock().unwrap().rows.get(&id) {
            Some((_, Some(object))) => (StatusCode::OK, Json(object.clone())),
            Some((_, None)) => (
                StatusCode::OK,
                Json(json!({"id": id, "object": "customer", "deleted": true})),
            ),
            None => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": {
                    "code": "resource_missing", "param": "id", "type": "invalid_request_error",
                    "message": format!("No such customer: '{id}'")
                }})),
            ),
        }
    }

    /// Serves the fake on a free port; returns its base URL.
    pub async fn start(db: Shared) -> String {
        let app = Router::new()
            .route("/v1/customers", get(list))
            .route("/v1/customers/{id}", get(retrieve))
            .with_state(db);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        url
    }
}

fn customer(id: &str, name: &str, email: &str, created: i64) -> Value {
    json!({
        "id": id,
        "object": "customer",
        "created": created,
        "name": name,
        "email": email,
        "phone": "+1 (415) 555-2671",
        "description": null,
        "address": {"line1": " 1 Market St ", "line2": "", "city": "San Francisco", "state": "CA", "postal_code": "94105", "country": "us"},
        "metadata": {"plan": "gold"},
        "livemode": false,
        "preferred_locales": [],
    })
}

/// The output of one `reconcile` run.
struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

async fn reconcile(pipeline: &Pipeline, stripe_url: &str, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(workspace_bin("reconcile").unwrap());
    command.args(args).kill_on_drop(true).env_clear();
    command.env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in pipeline.stage_env(Stage::Sink, 0) {
        if let Some(setting) = k.strip_prefix("SINK_DATAVERSE__") {
            command.env(format!("RECONCILE_DATAVERSE__{setting}"), v);
        } else if matches!(k.as_str(), "KAFKA_BOOTSTRAP_SERVERS" | "SCHEMA_REGISTRY_URL") {
            command.env(k, v);
        }
    }
    command
        .env("RUST_LOG", "info,rdkafka=warn")
        .env("STRIPE_API_KEY", STRIPE_KEY)
        .env("RECONCILE_STRIPE__BASE_URL", stripe_url)
        // Small pages on both sides, so paging is exercised.
        .env("RECONCILE_STRIPE__PAGE_SIZE", "2")
        .env("RECONCILE_DATAVERSE_PAGE_SIZE", "2")
        .env("RECONCILE_STRIPE__REQUESTS_PER_SECOND", "50")
        .env("RECONCILE_DATAVERSE_REQUESTS_PER_SECOND", "50")
        .env("RECONCILE_OUTPUT_TOPIC", &pipeline.names.customers_topic);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("reconcile finishes")
        .expect("reconcile runs");
    Run {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Changes a contact behind the pipeline's back, through the Web API as any other client would.
async fn edit_contact(pipeline: &Pipeline, customer_id: &str, body: Value) {
    let http = reqwest::Client::new();
    let base = pipeline.emulator_url();
    let token: Value = http
        .post(format!("{base}/pipeline/oauth2/v2.0/token"))
        .form(&[
            ("client_id", "sink-dataverse"),
            ("client_secret", "local-secret"),
            ("grant_type", "client_credentials"),
            ("scope", &format!("{base}/.default")),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = http
        .patch(format!(
            "{base}/api/data/v9.2/contacts(new_stripecustomerid='{customer_id}')"
        ))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .header("If-Match", "*")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "{:?}", response.text().await);
}

/// The drift of a JSON report as `(kind, customer_id)`, in report order.
fn kinds(report: &Value) -> Vec<(String, String)> {
    report["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["customer_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_finds_every_planted_drift_and_repair_fixes_it_through_the_sink() {
    let pipeline = Pipeline::start().await.unwrap();
    let db: stripe_fake::Shared = Arc::default();
    let stripe_url = stripe_fake::start(db.clone()).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    // Five customers, created in Stripe and delivered through the pipeline.
    let ids = [
        "cus_rec_same",
        "cus_rec_edited",
        "cus_rec_changed",
        "cus_rec_deleted",
        "cus_rec_unknown",
    ];
    for (i, id) in ids.iter().enumerate() {
        let object = customer(
            id,
            &format!("  Person   {i} "),
            &format!(" Person{i}@Example.COM "),
            now - 600 + i as i64,
        );
        db.lock()
            .unwrap()
            .rows
            .insert(id.to_string(), (now - 600 + i as i64, Some(object.clone())));
        let body = customer_event(&format!("evt_rec_{i}"), "customer.created", now - 120, object);
        assert_eq!(pipeline.send_webhook(&body).await.unwrap().status(), 200);
    }
    wait_until(
        "every contact written by the sink",
        Duration::from_secs(90),
        || async {
            let contacts = pipeline.contacts().await.ok()?;
            (contacts.len() == ids.len()).then_some(())
        },
    )
    .await
    .unwrap();

    // A clean state: nothing drifted, exit 0.
    let clean = reconcile(&pipeline, &stripe_url, &["--json"]).await;
    assert_eq!(clean.status, 0, "{}\n{}", clean.stdout, clean.stderr);
    let report: Value = serde_json::from_str(&clean.stdout).unwrap();
    assert_eq!(kinds(&report), Vec::<(String, String)>::new(), "{report:#}");
    assert_eq!(report["in_sync"], 5, "{report:#}");
    assert_eq!(report["stripe_customers"], 5);
    assert_eq!(report["dataverse_contacts"], 5);

    // Plant one drift of each kind, none of which the pipeline hears about.
    edit_contact(
        &pipeline,
        "cus_rec_edited",
        json!({"emailaddress1": "someone.typed.this@example.com"}),
    )
    .await;
    {
        let mut db = db.lock().unwrap();
        let changed = db.rows.get_mut("cus_rec_changed").unwrap();
        let object = changed.1.as_mut().unwrap();
        object["email"] = json!("  New.Address@Example.COM ");
        object["address"]["city"] = json!("  Oakland ");
        db.rows.get_mut("cus_rec_deleted").unwrap().1 = None;
        db.rows.remove("cus_rec_unknown");
        db.rows.insert(
            "cus_rec_missing".into(),
            (
                now - 30,
                Some(customer(
                    "cus_rec_missing",
                    "Never Delivered",
                    "never@example.com",
                    now - 30,
                )),
            ),
        );
    }

    let found = reconcile(&pipeline, &stripe_url, &["--json"]).await;
    assert_eq!(
        found.status, 1,
        "drift without --repair exits 1: {}\n{}",
        found.stdout, found.stderr
    );
    let report: Value = serde_json::from_str(&found.stdout).unwrap();
    let expected: Vec<(String, String)> = [
        ("missing", "cus_rec_missing"),
        ("different", "cus_rec_changed"),
        ("different", "cus_rec_edited"),
        ("deleted_in_stripe", "cus_rec_deleted"),
        ("unknown_to_stripe", "cus_rec_unknown"),
    ]
    .iter()
    .map(|(k, id)| (k.to_string(), id.to_string()))
    .collect();
    assert_eq!(kinds(&report), expected, "{report:#}");
    assert_eq!(report["in_sync"], 1, "{report:#}");
    let fields = |id: &str| -> Vec<(String, Value, Value)> {
        let entry = report["drift"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["customer_id"] == id)
            .unwrap();
        entry["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["column"].as_str().unwrap().to_string(),
                    f["dataverse"].clone(),
                    f["stripe"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        fields("cus_rec_changed"),
        vec![
            ("address1_city".into(), json!("San Francisco"), json!("Oakland")),
            (
                "emailaddress1".into(),
                json!("person2@example.com"),
                json!("new.address@example.com")
            ),
        ],
        "Stripe's side normalised as the enricher does"
    );
    assert_eq!(
        fields("cus_rec_edited"),
        vec![(
            "emailaddress1".into(),
            json!("someone.typed.this@example.com"),
            json!("person1@example.com")
        )]
    );

    // The table says the same.
    let table = reconcile(&pipeline, &stripe_url, &[]).await;
    eprintln!("{}", table.stdout);
    assert_eq!(table.status, 1, "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("DRIFT"), "{}", table.stdout);
    let rows: Vec<Vec<&str>> = lines[1..]
        .iter()
        .take_while(|l| !l.is_empty())
        .map(|l| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect())
        .collect();
    let labelled: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r.len() >= 3 && r[1].starts_with("cus_"))
        .map(|r| {
            let kind = match r[0] {
                "missing in Dataverse" => "missing",
                "different" => "different",
                "deleted in Stripe" => "deleted_in_stripe",
                "unknown to Stripe" => "unknown_to_stripe",
                other => panic!("unexpected label {other}"),
            };
            (kind.to_string(), r[1].to_string())
        })
        .collect();
    assert_eq!(labelled, expected, "{}", table.stdout);
    assert!(
        rows.iter()
            .any(|r| r == &["emailaddress1", "person2@example.com", "new.address@example.com"]),
        "a second differing column on its own line: {}",
        table.stdout
    );
    assert_eq!(report["stripe_customers"], 4);
    assert_eq!(report["dataverse_contacts"], 5);
    assert!(
        table.stdout.contains(
            "4 Stripe customers, 5 Dataverse contacts: 1 in sync, 5 drifted (1 missing in Dataverse, 2 different, 1 deleted in Stripe, 1 unknown to Stripe, 0 deleted in Dataverse)"
        ),
        "{}",
        table.stdout
    );

    // Repair: the corrective records go through the sink.
    let repaired = reconcile(&pipeline, &stripe_url, &["--json", "--repair"]).await;
    eprintln!("{}", repaired.stdout);
    assert_eq!(repaired.status, 0, "{}\n{}", repaired.stdout, repaired.stderr);
    let report: Value = serde_json::from_str(&repaired.stdout).unwrap();
    assert_eq!(report["repair"]["records"], 5, "{report:#}");
    assert_eq!(report["repair"]["topic"], pipeline.names.customers_topic.as_str());
    let run_id = report["run_id"].as_str().unwrap().to_string();

    let contact =
        |contacts: &[Value], id: &str| contacts.iter().find(|c| c["new_stripecustomerid"] == id).cloned();
    wait_until(
        "the sink to apply every corrective record",
        Duration::from_secs(90),
        || async {
            let contacts = pipeline.contacts().await.ok()?;
            let missing = contact(&contacts, "cus_rec_missing")?;
            let changed = contact(&contacts, "cus_rec_changed")?;
            let edited = contact(&contacts, "cus_rec_edited")?;
            let deleted = contact(&contacts, "cus_rec_deleted")?;
            let unknown = contact(&contacts, "cus_rec_unknown")?;
            (missing["emailaddress1"] == "never@example.com"
                && changed["emailaddress1"] == "new.address@example.com"
                && changed["address1_city"] == "Oakland"
                && edited["emailaddress1"] == "person1@example.com"
                && deleted["new_stripedeleted"] == true
                && deleted["statecode"] == 1
                && unknown["new_stripedeleted"] == true)
                .then_some(())
        },
    )
    .await
    .unwrap();
    let contacts = pipeline.contacts().await.unwrap();
    let changed = contact(&contacts, "cus_rec_changed").unwrap();
    assert_eq!(
        changed["new_stripeeventids"], run_id,
        "applied by the sink as the run's own change: {changed}"
    );
    let stamp = changed["new_stripeeventcreated"].as_i64().unwrap();
    let read_at = report["read_at"].as_i64().unwrap();
    assert!(
        (read_at..read_at + 30).contains(&stamp),
        "stamped with the time Stripe was read ({read_at}): {changed}"
    );

    // Nothing is left.
    let again = reconcile(&pipeline, &stripe_url, &["--json"]).await;
    assert_eq!(again.status, 0, "{}\n{}", again.stdout, again.stderr);
    let report: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(kinds(&report), Vec::<(String, String)>::new(), "{report:#}");
    assert_eq!(report["in_sync"], 6, "{report:#}");

    // A later real event still wins over a corrective record.
    let mut later = customer(
        "cus_rec_changed",
        "Real Event",
        "real.event@example.com",
        now - 598,
    );
    later["address"]["city"] = json!("Berkeley");
    db.lock().unwrap().rows.get_mut("cus_rec_changed").unwrap().1 = Some(later.clone());
    let future = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 1;
    let body = customer_event("evt_rec_later", "customer.updated", future, later);
    assert_eq!(pipeline.send_webhook(&body).await.unwrap().status(), 200);
    wait_until("the later event applied", Duration::from_secs(60), || async {
        let contacts = pipeline.contacts().await.ok()?;
        (contact(&contacts, "cus_rec_changed")?["emailaddress1"] == "real.event@example.com").then_some(())
    })
    .await
    .unwrap();
}
