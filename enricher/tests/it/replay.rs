//! `enricher replay`: after a full run, rewinding the group by offset or by time re-delivers
//! exactly the records from that point, and nothing else; a dry run changes nothing; a group that
//! may have live members is refused.

use std::collections::HashMap;

use schemas::StripeEvent;

use crate::support::{Env, Running, Topics, customer_event, enricher_command};

/// 2026-01-01T00:00:00Z.
const BASE_MS: i64 = 1_767_225_600_000;

/// Runs an enricher until it has committed everything, then stops it.
async fn run_to_end(env: &Env, t: &Topics) {
    let running = Running::start(env.config(t)).await;
    env.wait_caught_up(&t.group, &t.input).await;
    running.stop().await;
}

/// Output records written since `before` (high watermarks of the output topic), as sorted event
/// ids.
async fn new_outputs(env: &Env, t: &Topics, before: &HashMap<i32, i64>) -> Vec<String> {
    let mut ids: Vec<String> = env
        .read_customers(&t.output)
        .await
        .into_iter()
        .filter(|o| o.raw.offset >= before.get(&o.raw.partition).copied().unwrap_or(0))
        .map(|o| o.customer.source_event_id)
        .collect();
    ids.sort();
    ids
}

fn sorted_ids<'a>(events: impl IntoIterator<Item = &'a StripeEvent>) -> Vec<String> {
    let mut ids: Vec<String> = events.into_iter().map(|e| e.event_id.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_to_offset_redelivers_exactly_the_records_from_that_offset() {
    let env = Env::start().await;
    let t = env.topics(2).await;
    let mut by_partition: HashMap<i32, Vec<StripeEvent>> = HashMap::new();
    for p in 0..2 {
        for i in 0..10 {
            let e = customer_event(
                &format!("evt_p{p}_{i}"),
                "customer.updated",
                &format!("cus_p{p}_{}", i % 3),
                i,
            );
            env.produce_to(&t.input, &e, p).await;
            by_partition.entry(p).or_default().push(e);
        }
    }
    run_to_end(&env, &t).await;
    let before = env.high_watermarks(&t.output).await;
    assert_eq!(before.values().sum::<i64>(), 20);
    let cli_env = env.process_env(&t, ([127, 0, 0, 1], 0).into());

    // The local broker cannot describe groups, so without the override the reset is refused.
    let (ok, _, stderr) =
        enricher_command(&["replay", "--to-offset", "4", "--partition", "0"], &cli_env).await;
    assert!(!ok, "refused");
    assert!(stderr.contains("--assume-inactive"), "{stderr}");
    assert_eq!(
        env.committed(&t.group, &t.input).await,
        HashMap::from([(0, 10), (1, 10)])
    );

    // A dry run prints the plan (current and new offsets) and changes nothing.
    let (ok, stdout, stderr) = enricher_command(
        &["replay", "--to-offset", "4", "--partition", "0", "--dry-run"],
        &cli_env,
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("dry run"), "{stdout}");
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some("0"))
        .unwrap_or_else(|| panic!("no row for partition 0 in {stdout}"))
        .split_whitespace()
        .collect();
    assert_eq!(&row[..3], ["0", "10", "4"], "partition, current, new: {stdout}");
    assert!(
        !stdout.lines().any(|l| l.split_whitespace().next() == Some("1")),
        "only partition 0: {stdout}"
    );
    assert_eq!(
        env.committed(&t.group, &t.input).await,
        HashMap::from([(0, 10), (1, 10)])
    );

    let (ok, stdout, stderr) = enricher_command(
        &[
            "replay",
            "--to-offset",
            "4",
            "--partition",
            "0",
            "--assume-inactive",
        ],
        &cli_env,
    )
    .await;
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(
        env.committed(&t.group, &t.input).await,
        HashMap::from([(0, 4), (1, 10)])
    );

    run_to_end(&env, &t).await;
    assert_eq!(
        new_outputs(&env, &t, &before).await,
        sorted_ids(&by_partition[&0][4..])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_to_datetime_redelivers_exactly_the_records_since_then() {
    let env = Env::start().await;
    let t = env.topics(2).await;
    let events: Vec<StripeEvent> = (0..10)
        .map(|i| customer_event(&format!("evt_t{i}"), "customer.updated", &format!("cus_t{i}"), i))
        .collect();
    let timestamps: Vec<i64> = (0..10).map(|i| BASE_MS + i * 1000).collect();
    env.produce(&t.input, &events, Some(&timestamps)).await;
    run_to_end(&env, &t).await;
    let before = env.high_watermarks(&t.output).await;
    let cli_env = env.process_env(&t, ([127, 0, 0, 1], 0).into());

    // While an instance runs, the reset is refused.
    let running = Running::start(env.config(&t)).await;
    let (ok, _, stderr) =
        enricher_command(&["replay", "--to-datetime", "2026-01-01T00:00:06.500Z"], &cli_env).await;
    assert!(!ok, "refused while the group may be active: {stderr}");
    running.stop().await;

    // Records 7, 8 and 9 are at or after 6.5 s past the base time.
    let (ok, stdout, stderr) = enricher_command(
        &[
            "replay",
            "--to-datetime",
            "2026-01-01T00:00:06.500Z",
            "--assume-inactive",
        ],
        &cli_env,
    )
    .await;
    assert!(ok, "{stdout}{stderr}");
    run_to_end(&env, &t).await;
    assert_eq!(new_outputs(&env, &t, &before).await, sorted_ids(&events[7..]));
}
