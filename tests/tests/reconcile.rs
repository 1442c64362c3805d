//! `reconcile` against the whole pipeline, every component a real process: contacts written by
//! signed webhooks through gateway, enricher and sink; Stripe's side from the harness's fake of its
//! API, rate limiting included.
//! A clean state shows no drift; each planted drift (missing, different on either side, deleted
//! in Stripe, unknown to Stripe) is found and nothing else; the JSON says what the table says;
//! `--repair` fixes each through the sink, and a second run finds nothing.

use std::time::Duration;

use harness::{
    pipeline::{Pipeline, Stage, customer_event},
    stripe_fake::StripeFake,
    wait_until, workspace_bin,
};
use serde_json::{Value, json};

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

async fn reconcile(pipeline: &Pipeline, stripe: &StripeFake, args: &[&str]) -> Run {
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
        .env("STRIPE_API_KEY", stripe.api_key())
        .env("STRIPE_API_BASE", stripe.url())
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

/// Requests the emulator has answered 429, over every limit.
async fn throttled(pipeline: &Pipeline) -> u64 {
    let stats = pipeline.emulator_stats().await.unwrap();
    stats["throttled"]
        .as_object()
        .map_or(0, |by_limit| by_limit.values().filter_map(Value::as_u64).sum())
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
    let stripe = StripeFake::start().await.unwrap();
    // Stripe answers 429 beyond this, as it does past its limits; the client backs off.
    stripe.set_rate_limit(Some(2));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    // Four customers, created in Stripe and delivered through the pipeline.
    let ids = [
        "cus_rec_same",
        "cus_rec_edited",
        "cus_rec_changed",
        "cus_rec_deleted",
    ];
    let deliver = |i: usize, id: &str| {
        let object = customer(
            id,
            &format!("  Person   {i} "),
            &format!(" Person{i}@Example.COM "),
            now - 600 + i as i64,
        );
        (
            object.clone(),
            customer_event(&format!("evt_rec_{i}"), "customer.created", now - 120, object),
        )
    };
    for (i, id) in ids.iter().enumerate() {
        let (object, body) = deliver(i, id);
        stripe.put_customer(object);
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
    let clean = reconcile(&pipeline, &stripe, &["--json"]).await;
    assert_eq!(clean.status, 0, "{}\n{}", clean.stdout, clean.stderr);
    let report: Value = serde_json::from_str(&clean.stdout).unwrap();
    assert_eq!(kinds(&report), Vec::<(String, String)>::new(), "{report:#}");
    assert_eq!(report["in_sync"], 4, "{report:#}");
    assert_eq!(report["stripe_customers"], 4);
    assert_eq!(report["dataverse_contacts"], 4);

    // Plant one drift of each kind, none of which the pipeline hears about: a contact edited in
    // Dataverse, a customer changed and one deleted in Stripe, one never delivered, and a contact
    // of a customer Stripe never had.
    edit_contact(
        &pipeline,
        "cus_rec_edited",
        json!({"emailaddress1": "someone.typed.this@example.com"}),
    )
    .await;
    let mut changed = stripe.customer("cus_rec_changed").unwrap();
    changed["email"] = json!("  New.Address@Example.COM ");
    changed["address"]["city"] = json!("  Oakland ");
    stripe.put_customer(changed);
    stripe.delete_customer("cus_rec_deleted");
    stripe.put_customer(customer(
        "cus_rec_missing",
        "Never Delivered",
        "never@example.com",
        now - 30,
    ));
    let (_, body) = deliver(4, "cus_rec_unknown");
    assert_eq!(pipeline.send_webhook(&body).await.unwrap().status(), 200);
    wait_until(
        "the contact Stripe does not know",
        Duration::from_secs(60),
        || async { pipeline.contact("cus_rec_unknown").await.ok().flatten() },
    )
    .await
    .unwrap();

    let found = reconcile(&pipeline, &stripe, &["--json"]).await;
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

    // The table says the same, from a run that meets Dataverse's service protection limits
    // (429 with Retry-After) and waits them out.
    let throttled_before = throttled(&pipeline).await;
    pipeline
        .set_faults(json!({"force_throttle": {"duration_ms": 5000, "kind": "requests"}}))
        .await
        .unwrap();
    let table = reconcile(&pipeline, &stripe, &[]).await;
    assert!(
        throttled(&pipeline).await > throttled_before,
        "the listing was throttled: {}",
        table.stderr
    );
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
    let repaired = reconcile(&pipeline, &stripe, &["--json", "--repair"]).await;
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
    let again = reconcile(&pipeline, &stripe, &["--json"]).await;
    assert_eq!(again.status, 0, "{}\n{}", again.stdout, again.stderr);
    let report: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(kinds(&report), Vec::<(String, String)>::new(), "{report:#}");
    assert_eq!(report["in_sync"], 6, "{report:#}");
    assert!(
        stripe.throttled() > 0,
        "Stripe's rate limit was met and waited out"
    );

    // A later real event still wins over a corrective record.
    let mut later = customer(
        "cus_rec_changed",
        "Real Event",
        "real.event@example.com",
        now - 598,
    );
    later["address"]["city"] = json!("Berkeley");
    stripe.put_customer(later.clone());
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
