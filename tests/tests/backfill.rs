//! `gateway backfill` end to end: a Stripe account (the local fake) whose webhooks were partly
//! never delivered, the whole pipeline as real processes, and the backfill as a user runs it.

use std::{collections::BTreeMap, time::Duration};

use harness::{
    pipeline::{Pipeline, Stage, WEBHOOK_SECRET},
    stripe_fake::StripeFake,
    unique, wait_until,
    workload::{self, Delivery, Spec, Workload},
};

/// Whether the webhook of this event was delivered: about two in three.
fn delivered(event_id: &str) -> bool {
    let h = event_id
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    h % 3 != 0
}

fn small_workload(prefix: &str) -> Workload {
    let spec = Spec {
        events: 120,
        updates: 1..=3,
        duplicate_ratio: 0.0,
        ..Spec::default()
    };
    workload::generate(prefix, &spec, workload::seed())
}

async fn start(fake: &StripeFake) -> Pipeline {
    Pipeline::start_with(vec![
        ("STRIPE_API_KEY".into(), fake.api_key()),
        ("STRIPE_API_BASE".into(), fake.url()),
        ("GATEWAY_STRIPE__REQUESTS_PER_SECOND".into(), "200".into()),
        ("GATEWAY_STRIPE__PAGE_SIZE".into(), "10".into()),
        (
            "GATEWAY_BACKFILL__CHECKPOINT_TOPIC".into(),
            unique("stripe.events.backfill"),
        ),
    ])
    .await
    .unwrap()
}

/// Delivers the webhooks that Stripe managed to deliver, and loads every event into the fake.
async fn deliver_some(pipeline: &Pipeline, fake: &StripeFake, w: &Workload) {
    fake.add_workload(w, delivered);
    let webhooks: Vec<Delivery> = w
        .deliveries
        .iter()
        .filter(|d| delivered(&d.event_id))
        .cloned()
        .collect();
    let sender = workload::Sender::new(
        format!("{}/webhooks/stripe", pipeline.url(Stage::Gateway)),
        WEBHOOK_SECRET,
    );
    let report = sender.deliver(&webhooks).await;
    assert!(report.gave_up.is_empty(), "{report:?}");
    caught_up(pipeline).await;
}

async fn caught_up(pipeline: &Pipeline) {
    let n = &pipeline.names;
    pipeline
        .env
        .wait_caught_up(&n.enricher_group, &n.events_topic)
        .await;
    pipeline
        .env
        .wait_caught_up(&n.sink_group, &n.customers_topic)
        .await;
}

fn operations(stats: &serde_json::Value) -> serde_json::Value {
    stats["operations"].clone()
}

fn rows(contacts: &[serde_json::Value]) -> BTreeMap<String, serde_json::Value> {
    contacts
        .iter()
        .map(|c| {
            (
                c["new_stripecustomerid"].as_str().unwrap_or_default().to_string(),
                c.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_recovers_undelivered_events_and_a_second_run_changes_nothing() {
    let fake = StripeFake::start().await.unwrap();
    let pipeline = start(&fake).await;
    let w = small_workload("bf");
    deliver_some(&pipeline, &fake, &w).await;
    let missing = workload::compare(&pipeline.contacts().await.unwrap(), &w.expected);
    assert!(
        !missing.is_empty(),
        "some webhooks were withheld, so Dataverse must be behind"
    );

    let dry = pipeline
        .run_command(
            Stage::Gateway,
            &["backfill", "--since", "8d", "--only-undelivered", "--dry-run"],
        )
        .await
        .unwrap();
    let undelivered = w
        .deliveries
        .iter()
        .map(|d| &d.event_id)
        .collect::<std::collections::HashSet<_>>();
    let undelivered = undelivered.iter().filter(|id| !delivered(id)).count();
    assert!(dry.contains(&format!("would write {undelivered} ")), "{dry}");
    let out = pipeline
        .run_command(
            Stage::Gateway,
            &[
                "backfill",
                "--since",
                "8d",
                "--only-undelivered",
                "--types",
                "customer.*",
            ],
        )
        .await
        .unwrap();
    assert!(out.contains(&format!("wrote {undelivered} ")), "{out}");
    let requests = fake.requests();
    let list = requests.iter().rfind(|r| r.path == "/v1/events").unwrap();
    assert_eq!(list.param("delivery_success"), Some("false"));
    assert_eq!(list.param("type"), Some("customer.*"));
    caught_up(&pipeline).await;
    let problems = workload::compare(&pipeline.contacts().await.unwrap(), &w.expected);
    assert!(
        problems.is_empty(),
        "after the backfill (seed {}): {problems:#?}",
        w.seed
    );

    // Every event again, overlapping every webhook: nothing changes in Dataverse.
    let before_ops = operations(&pipeline.emulator_stats().await.unwrap());
    let before_rows = rows(&pipeline.contacts().await.unwrap());
    let out = pipeline
        .run_command(Stage::Gateway, &["backfill", "--since", "8d"])
        .await
        .unwrap();
    assert!(out.contains(&format!("wrote {} ", w.events)), "{out}");
    caught_up(&pipeline).await;
    let after_ops = operations(&pipeline.emulator_stats().await.unwrap());
    let after_rows = rows(&pipeline.contacts().await.unwrap());
    for op in ["created", "updated", "deleted"] {
        assert_eq!(
            before_ops[op], after_ops[op],
            "Dataverse {op} count changed: {before_ops} → {after_ops}"
        );
    }
    assert_eq!(before_rows, after_rows, "a Dataverse row changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_backfill_resumes_where_it_stopped() {
    let fake = StripeFake::start().await.unwrap();
    let pipeline = start(&fake).await;
    let w = small_workload("bfr");
    deliver_some(&pipeline, &fake, &w).await;
    // Slow pages, so the backfill can be killed between them.
    fake.set_latency(Duration::from_millis(400));
    let mut command = tokio::process::Command::new(harness::workspace_bin("gateway").unwrap());
    command
        .args(["backfill", "--since", "8d", "--only-undelivered"])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in pipeline.stage_env(Stage::Gateway, 0) {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    wait_until("three pages read", Duration::from_secs(60), || async {
        (fake.requests().iter().filter(|r| r.path == "/v1/events").count() >= 3).then_some(())
    })
    .await
    .unwrap();
    child.kill().await.unwrap();
    let first_run = fake.requests().len();
    fake.set_latency(Duration::ZERO);

    let out = pipeline
        .run_command(
            Stage::Gateway,
            &["backfill", "--since", "8d", "--only-undelivered"],
        )
        .await
        .unwrap();
    assert!(out.contains("resuming an interrupted run"), "{out}");
    let resumed = &fake.requests()[first_run];
    assert!(
        resumed.param("starting_after").is_some(),
        "the resumed run starts after the checkpoint: {resumed:?}"
    );
    caught_up(&pipeline).await;
    let problems = workload::compare(&pipeline.contacts().await.unwrap(), &w.expected);
    assert!(
        problems.is_empty(),
        "after the resumed backfill (seed {}): {problems:#?}",
        w.seed
    );
}
