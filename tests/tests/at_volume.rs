//! The whole pipeline at volume and under fire. Every component is a real process started the way
//! a user starts it; the deliveries are generated Stripe histories (creates, several updates,
//! deletes, messy fields, changes sharing a second, some delivered twice, out of order) sent the
//! way Stripe sends them (concurrently, each retried until answered 2xx). Every scenario ends by
//! comparing Dataverse with the exact state the model expects and prints one line: events sent,
//! acknowledged, contacts in Dataverse, time.
//!
//! A failing scenario prints its seed; `WORKLOAD_SEED=<seed>` generates the same histories again.

use std::{
    net::SocketAddr,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use harness::{
    inspect::{metric, scrape, wait_metric},
    pipeline::{Pipeline, Stage, WEBHOOK_SECRET},
    wait_until,
    workload::{self, Delivery, SendReport, Sender, Spec, Workload, compare},
};
use rand::Rng;
use serde_json::json;

fn sender(pipeline: &Pipeline) -> Sender {
    Sender::new(
        format!("{}/webhooks/stripe", pipeline.url(Stage::Gateway)),
        WEBHOOK_SECRET,
    )
}

fn workload(prefix: &str, events: usize) -> Workload {
    let spec = Spec {
        events,
        ..Spec::default()
    };
    workload::generate(prefix, &spec, workload::seed())
}

/// Delivers in the background; the returned handle gives the report.
fn deliver_in_background(sender: &Sender, deliveries: &[Delivery]) -> tokio::task::JoinHandle<SendReport> {
    let (sender, deliveries) = (sender.clone(), deliveries.to_vec());
    tokio::spawn(async move { sender.deliver(&deliveries).await })
}

/// Waits until `n` deliveries were acknowledged.
async fn acknowledged(sender: &Sender, n: usize) {
    wait_until(
        &format!("{n} acknowledged deliveries"),
        Duration::from_secs(300),
        || async { (sender.acknowledged.load(Ordering::Relaxed) >= n).then_some(()) },
    )
    .await
    .unwrap();
}

/// Records in a topic, summed over its partitions.
async fn records_in(pipeline: &Pipeline, topic: &str) -> i64 {
    pipeline.env.high_watermarks(topic).await.values().sum()
}

/// Where each group stands on its topic, and what each running member of a consuming stage
/// reports about its partitions and lag: the first thing to read when a scenario does not settle.
async fn progress(pipeline: &Pipeline) -> String {
    let n = &pipeline.names;
    let mut out = String::new();
    for (group, topic) in [
        (&n.enricher_group, &n.events_topic),
        (&n.sink_group, &n.customers_topic),
    ] {
        let mut ends: Vec<_> = pipeline.env.high_watermarks(topic).await.into_iter().collect();
        ends.sort();
        let committed = pipeline.env.committed(group, topic).await;
        out += &format!("{topic}: end offsets {ends:?}, {group} committed {committed:?}\n");
    }
    for stage in [Stage::Enricher, Stage::Sink] {
        for member in pipeline.members(stage) {
            let text = scrape(ops(pipeline, stage, member)).await.unwrap_or_default();
            let lines: Vec<_> = text
                .lines()
                .filter(|l| {
                    l.contains("assigned_partitions") || l.contains("consumer_lag") || l.contains("paused")
                })
                .filter(|l| !l.starts_with('#'))
                .collect();
            out += &format!("{stage:?} member {member}: {lines:?}\n");
        }
    }
    out
}

/// Waits until Dataverse holds exactly the expected state and both groups have committed
/// everything, checks again (nothing stale arrives late), checks that nothing was dead-lettered,
/// and prints the scenario's summary line.
async fn settle(scenario: &str, pipeline: &Pipeline, w: &Workload, report: &SendReport, start: Instant) {
    assert!(
        report.gave_up.is_empty(),
        "{scenario}: deliveries never acknowledged: {report}"
    );
    assert_eq!(report.acknowledged, w.deliveries.len(), "{scenario}: {report}");
    let last = std::sync::Mutex::new(Vec::new());
    let settled = wait_until(
        "Dataverse to hold exactly the expected contacts",
        Duration::from_secs(600),
        || async {
            let contacts = pipeline.contacts().await.ok()?;
            let problems = compare(&contacts, &w.expected);
            let done = problems.is_empty();
            *last.lock().unwrap() = problems;
            done.then_some(contacts)
        },
    )
    .await;
    let n = &pipeline.names;
    if settled.is_err() {
        let last = last.lock().unwrap().clone();
        panic!(
            "{scenario} (seed {}): {} differences from the model, first: {:#?}\n{}",
            w.seed,
            last.len(),
            &last[..last.len().min(20)],
            progress(pipeline).await
        );
    }
    pipeline
        .env
        .wait_caught_up_within(&n.enricher_group, &n.events_topic, Duration::from_secs(300))
        .await
        .unwrap();
    pipeline
        .env
        .wait_caught_up_within(&n.sink_group, &n.customers_topic, Duration::from_secs(300))
        .await
        .unwrap();
    let contacts = pipeline.contacts().await.unwrap();
    let problems = compare(&contacts, &w.expected);
    assert!(
        problems.is_empty(),
        "{scenario} (seed {}): after every group caught up: {problems:#?}",
        w.seed
    );
    for dlq in [
        format!("{}.dlq", n.events_topic),
        format!("{}.dlq", n.customers_topic),
    ] {
        assert_eq!(
            records_in(pipeline, &dlq).await,
            0,
            "{scenario}: nothing is dead-lettered"
        );
    }
    let deleted = w.expected.values().filter(|e| e.deleted).count();
    summary(format_args!(
        "scenario {scenario}: {} events, {} deliveries sent, {} acknowledged after {} attempts, {} contacts in Dataverse ({} deleted) as expected, seed {}, {:.1} s",
        w.events,
        report.deliveries,
        report.acknowledged,
        report.attempts,
        contacts.len(),
        deleted,
        w.seed,
        start.elapsed().as_secs_f64()
    ));
}

/// Prints a scenario's summary line on stderr past the test harness's output capture, so the log
/// of a plain `cargo test` (CI's) shows what each scenario proved.
fn summary(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn ops(pipeline: &Pipeline, stage: Stage, member: usize) -> SocketAddr {
    pipeline.ops(stage, member)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_events_in_any_order_end_exactly_as_the_model() {
    let start = Instant::now();
    let pipeline = Pipeline::start().await.unwrap();
    let w = workload("vol", 2_000);
    let report = sender(&pipeline).deliver(&w.deliveries).await;
    settle("volume", &pipeline, &w, &report, start).await;
    // Redeliveries and stale events were recognised, not written.
    let sink = scrape(ops(&pipeline, Stage::Sink, 0)).await.unwrap();
    let skipped = metric(&sink, "sink_dataverse_writes_total{outcome=\"stale\"}")
        + metric(&sink, "sink_dataverse_writes_total{outcome=\"unchanged\"}");
    assert!(skipped > 0.0, "out-of-order deliveries were judged stale");
}

#[tokio::test(flavor = "multi_thread")]
async fn crashes_of_every_stage_mid_stream_lose_no_acknowledged_event() {
    let start = Instant::now();
    let mut pipeline = Pipeline::start().await.unwrap();
    let w = workload("crash", 3_000);
    let sender = sender(&pipeline);
    let run = deliver_in_background(&sender, &w.deliveries);
    let total = w.deliveries.len();
    let mut rng = rand::rng();

    // The gateway dies mid-stream: deliveries in flight get no answer and are sent again.
    acknowledged(&sender, total / 6).await;
    pipeline.kill(Stage::Gateway);
    tokio::time::sleep(Duration::from_millis(500)).await;
    pipeline.start_stage(Stage::Gateway).await.unwrap();

    // Then the consuming stages, at random moments, several times each.
    for round in 0..2 {
        for stage in [Stage::Enricher, Stage::Sink] {
            let at = total * (2 + round * 2) / 6 + rng.random_range(0..total / 12);
            acknowledged(&sender, at.min(total)).await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..1_000))).await;
            pipeline.kill(stage);
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..2_000))).await;
            pipeline.start_stage(stage).await.unwrap();
        }
    }
    let report = run.await.unwrap();
    assert!(
        report
            .failures
            .keys()
            .any(|k| k == "connection error" || k == "timeout"),
        "the gateway's crash left deliveries unanswered: {report}"
    );
    settle("crashes", &pipeline, &w, &report, start).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_while_every_stage_runs_loses_nothing() {
    let start = Instant::now();
    let mut pipeline = Pipeline::start().await.unwrap();
    let w = workload("broker", 2_500);
    let sender = sender(&pipeline);
    let run = deliver_in_background(&sender, &w.deliveries);
    acknowledged(&sender, w.deliveries.len() / 3).await;
    pipeline.env.broker.stop();
    let before = sender.acknowledged.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = sender.acknowledged.load(Ordering::Relaxed);
    pipeline.env.broker.start_again().await.unwrap();
    let report = run.await.unwrap();
    // While the broker is away the gateway holds each request until its write is acknowledged or
    // its produce timeout passes (then 503); either way nothing is answered 2xx without the broker.
    assert!(
        before < w.deliveries.len(),
        "the broker stopped mid-stream: {report}"
    );
    assert!(
        during - before <= 16,
        "at most the requests in flight when the broker stopped were acknowledged while it was away \
         ({before} before, {during} after 5 s)"
    );
    for answer in report.failures.keys() {
        assert!(
            ["503", "timeout", "connection error"].contains(&answer.as_str()),
            "only retryable answers while the broker is away: {report}"
        );
    }
    settle("broker restart", &pipeline, &w, &report, start).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_registry_outage_is_ridden_out() {
    let start = Instant::now();
    let mut pipeline = Pipeline::start().await.unwrap();
    let w = workload("registry", 2_500);
    let sender = sender(&pipeline);
    let run = deliver_in_background(&sender, &w.deliveries);
    acknowledged(&sender, w.deliveries.len() / 3).await;
    pipeline.env.registry.stop();
    tokio::time::sleep(Duration::from_secs(8)).await;
    pipeline.env.registry.start_again().await.unwrap();
    let report = run.await.unwrap();
    for answer in report.failures.keys() {
        assert_eq!(answer, "503", "only 503s during a registry outage: {report}");
    }
    settle("registry outage", &pipeline, &w, &report, start).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_and_5xx_storms_slow_the_sink_and_dead_letter_nothing() {
    let start = Instant::now();
    let pipeline = Pipeline::start().await.unwrap();
    let w = workload("storm", 2_500);
    let sender = sender(&pipeline);
    let sink = ops(&pipeline, Stage::Sink, 0);
    let (first, second) = w.deliveries.split_at(w.deliveries.len() / 3);
    let early = sender.deliver(first).await;
    wait_metric(sink, "sink_dataverse_writes_total{outcome=\"created\"}", 1.0).await;
    // Dataverse says "too much execution time" to every request while the rest arrives, until
    // the sink has met it; then half of all requests fail with a 500 or 503 until the sink has
    // met those too; then Dataverse recovers.
    pipeline
        .set_faults(json!({"force_throttle": {"duration_ms": 4000, "kind": "execution_time"}}))
        .await
        .unwrap();
    let run = deliver_in_background(&sender, second);
    wait_metric(sink, "sink_dataverse_throttled_total", 1.0).await;
    pipeline
        .set_faults(json!({"error_rate": 0.5, "error_statuses": [500, 503]}))
        .await
        .unwrap();
    wait_until(
        "the 5xx storm to reach the sink",
        Duration::from_secs(120),
        || async {
            let stats = pipeline.emulator_stats().await.ok()?;
            (stats["faults_injected"].as_u64()? > 0).then_some(())
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pipeline.set_faults(json!({})).await.unwrap();
    let report = early.and(run.await.unwrap());
    settle("throttling and 5xx storms", &pipeline, &w, &report, start).await;
    let text = scrape(sink).await.unwrap_or_default();
    assert!(
        metric(&text, "sink_dataverse_retries_total{class=\"server_error\"}") > 0.0,
        "the sink retried the writes that met a 500 or 503:\n{text}"
    );
}

/// Each member's `assigned_partitions` gauge.
async fn assignment(pipeline: &Pipeline, stage: Stage, members: &[usize]) -> Vec<f64> {
    let prefix = match stage {
        Stage::Enricher => "enricher",
        Stage::Sink => "sink_dataverse",
        Stage::Gateway => unreachable!("the gateway has no group"),
    };
    let mut out = Vec::new();
    for &m in members {
        let text = scrape(ops(pipeline, stage, m)).await.unwrap_or_default();
        out.push(metric(&text, &format!("{prefix}_assigned_partitions")));
    }
    out
}

async fn wait_spread(pipeline: &Pipeline, stage: Stage, members: &[usize], partitions: f64) {
    wait_until(
        &format!("{stage:?}'s partitions spread over members {members:?}"),
        Duration::from_secs(120),
        || async {
            let a = assignment(pipeline, stage, members).await;
            (a.iter().sum::<f64>() == partitions && a.iter().all(|&n| n >= 1.0)).then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn three_enrichers_and_two_sinks_share_the_partitions_and_survivors_take_over() {
    let start = Instant::now();
    let mut pipeline = Pipeline::start().await.unwrap();
    // The added members are dynamic: stopped in order, they leave their group, as replicas of a
    // Deployment scaled down do.
    for m in 1..3 {
        pipeline.start_dynamic_member(Stage::Enricher, m).await.unwrap();
    }
    pipeline.start_dynamic_member(Stage::Sink, 1).await.unwrap();
    // Three partitions: one per enricher, two and one for the sinks.
    wait_spread(&pipeline, Stage::Enricher, &[0, 1, 2], 3.0).await;
    wait_spread(&pipeline, Stage::Sink, &[0, 1], 3.0).await;

    let w = workload("scale", 2_500);
    let sender = sender(&pipeline);
    let run = deliver_in_background(&sender, &w.deliveries);
    acknowledged(&sender, w.deliveries.len() * 2 / 5).await;
    // Mid-run one of each is stopped (SIGTERM); the survivors take its partitions over.
    pipeline.stop_member(Stage::Enricher, 2, Duration::from_secs(30));
    pipeline.stop_member(Stage::Sink, 1, Duration::from_secs(30));
    wait_spread(&pipeline, Stage::Enricher, &[0, 1], 3.0).await;
    wait_spread(&pipeline, Stage::Sink, &[0], 3.0).await;
    let report = run.await.unwrap();
    settle("scaling", &pipeline, &w, &report, start).await;
}

/// Every contact, as a comparable snapshot, and the emulator's count of writes that took effect.
async fn snapshot(pipeline: &Pipeline) -> (Vec<serde_json::Value>, serde_json::Value) {
    let mut contacts = pipeline.contacts().await.unwrap();
    contacts.sort_by_key(|c| c["new_stripecustomerid"].as_str().unwrap_or_default().to_string());
    let stats = pipeline.emulator_stats().await.unwrap();
    let mut writes = stats["operations"].clone();
    if let Some(o) = writes.as_object_mut() {
        o.remove("read");
    }
    (contacts, writes)
}

#[tokio::test(flavor = "multi_thread")]
async fn replaying_the_sink_from_the_start_and_the_enricher_from_a_time_changes_no_row() {
    let start = Instant::now();
    let mut pipeline = Pipeline::start().await.unwrap();
    let w = workload("replay", 1_500);
    let (first, second) = w.deliveries.split_at(w.deliveries.len() / 2);
    let sender = sender(&pipeline);
    let first_report = sender.deliver(first).await;
    assert_eq!(first_report.acknowledged, first.len(), "{first_report}");
    let n = pipeline.names.clone();
    pipeline
        .env
        .wait_caught_up_within(&n.enricher_group, &n.events_topic, Duration::from_secs(300))
        .await
        .unwrap();
    // Every event the gateway writes from here on is later than `from`.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let from = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let report = first_report.and(sender.deliver(second).await);
    settle("replay (first pass)", &pipeline, &w, &report, start).await;
    let before = snapshot(&pipeline).await;

    // The sink, rewound to the earliest offset, reads everything again and writes nothing.
    pipeline.stop_member(Stage::Sink, 0, Duration::from_secs(30));
    let plan = pipeline
        .run_command(Stage::Sink, &["replay", "--to-earliest", "--assume-inactive"])
        .await
        .unwrap();
    pipeline.start_stage(Stage::Sink).await.unwrap();
    let reread = records_in(&pipeline, &n.customers_topic).await;
    let sink_ops = ops(&pipeline, Stage::Sink, 0);
    wait_until(
        "the sink to read everything again",
        Duration::from_secs(300),
        || async {
            let text = scrape(sink_ops).await?;
            let finished: f64 = [
                "created",
                "updated",
                "deactivated",
                "tombstoned",
                "stale",
                "unchanged",
            ]
            .iter()
            .map(|o| metric(&text, &format!("sink_dataverse_writes_total{{outcome=\"{o}\"}}")))
            .sum();
            (finished >= reread as f64).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; replay said: {plan}"));
    pipeline
        .env
        .wait_caught_up_within(&n.sink_group, &n.customers_topic, Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(
        snapshot(&pipeline).await,
        before,
        "a replayed sink changes no row"
    );

    // The enricher, rewound to a time, normalises exactly the events written after it again.
    let later = pipeline
        .env
        .read_all(&n.events_topic)
        .await
        .iter()
        .filter(|r| {
            r.timestamp
                .is_some_and(|t| t >= (from.unix_timestamp_nanos() / 1_000_000) as i64)
        })
        .count() as i64;
    assert!(later > 0 && (later as usize) < w.deliveries.len());
    pipeline.stop_member(Stage::Enricher, 0, Duration::from_secs(30));
    let normalized = records_in(&pipeline, &n.customers_topic).await;
    let rfc3339 = from
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    pipeline
        .run_command(
            Stage::Enricher,
            &["replay", "--to-datetime", &rfc3339, "--assume-inactive"],
        )
        .await
        .unwrap();
    pipeline.start_stage(Stage::Enricher).await.unwrap();
    pipeline
        .env
        .wait_caught_up_within(&n.enricher_group, &n.events_topic, Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(
        records_in(&pipeline, &n.customers_topic).await,
        normalized + later,
        "exactly the {later} events after {rfc3339} are normalised again"
    );
    pipeline
        .env
        .wait_caught_up_within(&n.sink_group, &n.customers_topic, Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(
        snapshot(&pipeline).await,
        before,
        "re-normalised events change no row"
    );
    summary(format_args!(
        "scenario replay: sink re-read {reread} records and enricher re-normalised {later} events after {rfc3339}; no row changed, {:.1} s",
        start.elapsed().as_secs_f64()
    ));
}
