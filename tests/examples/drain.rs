//! The drain benchmark's measuring tool (see `scripts/bench-drain.sh`).
//!
//! ```text
//! drain plain <bootstrap> <topic> <group>           read the topic from the start as a plain
//!                                                   consumer group (librdkafka defaults,
//!                                                   cooperative-sticky, auto commit)
//! drain wait <bootstrap> <topic> <group> <seconds>  wait until <group> has committed all of it
//! ```
//!
//! Both print one line: `<records> records in <seconds> s = <rate> records/s`, timed from the
//! tool's start, and exit non-zero when the deadline passes first.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let start = Instant::now();
    let (mode, bootstrap, topic, group) = match args.as_slice() {
        [mode, bootstrap, topic, group, ..] => (mode.as_str(), bootstrap, topic, group),
        _ => anyhow::bail!("usage: drain plain|wait <bootstrap> <topic> <group> [seconds]"),
    };
    let deadline = Duration::from_secs(args.get(4).map_or(Ok(1800), |s| s.parse())?);
    let high = high_watermarks(bootstrap, topic)?;
    let total: i64 = high.values().sum();
    match mode {
        "plain" => plain(bootstrap, topic, group, total, start, deadline)?,
        "wait" => wait_committed(bootstrap, topic, group, &high, start, deadline)?,
        other => anyhow::bail!("unknown mode {other}"),
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{total} records in {secs:.1} s = {:.0} records/s",
        total as f64 / secs
    );
    Ok(())
}

fn client(bootstrap: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()?)
}

fn high_watermarks(bootstrap: &str, topic: &str) -> anyhow::Result<HashMap<i32, i64>> {
    let c = client(bootstrap, "drain-watermarks")?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    partitions
        .into_iter()
        .map(|p| Ok((p, c.fetch_watermarks(topic, p, Duration::from_secs(30))?.1)))
        .collect()
}

fn plain(
    bootstrap: &str,
    topic: &str,
    group: &str,
    total: i64,
    start: Instant,
    deadline: Duration,
) -> anyhow::Result<()> {
    let c = client(bootstrap, group)?;
    c.subscribe(&[topic])?;
    let mut read = 0i64;
    while read < total {
        anyhow::ensure!(start.elapsed() < deadline, "read {read} of {total} in time");
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.payload().is_some() => read += 1,
            Some(Err(e)) => eprintln!("consumer error: {e}"),
            _ => {}
        }
    }
    c.commit_consumer_state(rdkafka::consumer::CommitMode::Sync)?;
    Ok(())
}

fn wait_committed(
    bootstrap: &str,
    topic: &str,
    group: &str,
    high: &HashMap<i32, i64>,
    start: Instant,
    deadline: Duration,
) -> anyhow::Result<()> {
    let c = client(bootstrap, group)?;
    let mut tpl = TopicPartitionList::new();
    for p in high.keys() {
        tpl.add_partition(topic, *p);
    }
    loop {
        anyhow::ensure!(
            start.elapsed() < deadline,
            "group {group} did not catch up in time"
        );
        if let Ok(committed) = c.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            let done = committed.elements().iter().all(|e| {
                let h = high[&e.partition()];
                h == 0 || matches!(e.offset(), Offset::Offset(o) if o >= h)
            });
            if done {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
