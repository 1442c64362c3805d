//! `gateway backfill`: recovers events whose webhooks never arrived by reading Stripe's events API
//! (`GET /v1/events`, the last 30 days; `delivery_success=false` with `--only-undelivered`) and
//! writing each event to `stripe.events` through the same parsing ([`VerifiedEvent::from_api`])
//! and the same durable write ([`KafkaPublisher`]) as a verified webhook, with `source` =
//! `backfill`. Downstream is idempotent by event id, so overlapping webhooks changes nothing.
//!
//! Resuming: Stripe lists newest first, so after each page is durable the backfill records a
//! checkpoint — the last (oldest) event id written and its time — in a compacted Kafka topic
//! (`backfill.checkpoint_topic`), keyed by the window (since, until, types, undelivered). A run
//! over the same window finds an unfinished checkpoint and continues with `starting_after` that
//! id (no local state file; any machine can resume). A finished run leaves a `done` checkpoint,
//! and the next run over the window walks it again (harmless: nothing changes downstream).
//! `--from-start` ignores a checkpoint. When `--until` is not given, the first run fixes it to
//! its start time and a resumed run keeps that bound.

use std::{
    collections::HashSet,
    io::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use common::{
    kafka::{self, TopicSpec},
    retry::{self, Retry, Stopped, Verdict},
    stripe::{EventQuery, StripeClient, StripeError},
};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    producer::FutureRecord,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    GatewayConfig, VerifiedEvent,
    publish::{KafkaPublisher, PublishError},
};

/// `gateway backfill` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BackfillArgs {
    /// Oldest event time to recover: unix seconds, RFC 3339 (`2026-12-01T00:00:00Z`) or an age
    /// (`36h`, `7d`). Stripe keeps events for 30 days.
    #[arg(long, value_name = "TIME", value_parser = TimeArg::parse)]
    pub since: TimeArg,
    /// Newest event time, exclusive (same forms). Default: now.
    #[arg(long, value_name = "TIME", value_parser = TimeArg::parse)]
    pub until: Option<TimeArg>,
    /// Event types to recover (repeatable or comma-separated). One may be a wildcard
    /// (`customer.*`); several are matched exactly (Stripe's `types[]`, at most 20). Default: all.
    #[arg(long = "types", value_name = "TYPE", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only events whose webhook delivery has not succeeded (`delivery_success=false`).
    #[arg(long)]
    pub only_undelivered: bool,
    /// List and count what would be written; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Ignore a checkpoint of an interrupted run over the same window and start at the newest event.
    #[arg(long)]
    pub from_start: bool,
    /// No progress line on stderr (the summary is still printed).
    #[arg(long)]
    pub quiet: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Events listed by Stripe.
    pub read: u64,
    /// Events written to the topic (or, in a dry run, that would be).
    pub written: u64,
    /// Events not written: listed twice in this run, or not parseable as an event.
    pub skipped: u64,
    /// Pages fetched.
    pub pages: u64,
    /// The run continued an interrupted one.
    pub resumed: bool,
}

/// A `--since` / `--until` value: as written (what identifies a window across runs: `7d` is the
/// same backfill when run again a minute later) and resolved to unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeArg {
    pub text: String,
    pub secs: i64,
}

impl TimeArg {
    pub fn parse(s: &str) -> Result<TimeArg, String> {
        Ok(TimeArg {
            text: s.trim().to_string(),
            secs: parse_time(s)?,
        })
    }
}

/// A checkpoint record's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    /// The window's resolved lower bound (`created[gte]`).
    since: i64,
    /// The window's resolved upper bound (`created[lt]`).
    until: i64,
    /// The oldest event written so far; the next page starts after it.
    after: Option<String>,
    /// Its `created`.
    after_created: Option<i64>,
    done: bool,
    totals: Summary,
}

/// Parses `--since` / `--until`: unix seconds, RFC 3339, or an age before now (`90m`, `36h`, `7d`).
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    let age = if let Some(days) = s.strip_suffix('d') {
        days.trim()
            .parse::<f64>()
            .ok()
            .filter(|d| d.is_finite() && *d >= 0.0)
            .map(|d| Duration::from_secs_f64(d * 86_400.0))
    } else {
        s.parse::<common::config::HumanDuration>()
            .ok()
            .map(Duration::from)
    };
    match age {
        Some(age) => Ok(now_secs() - age.as_secs() as i64),
        None => Err(format!(
            "`{s}` is not a time: use unix seconds, RFC 3339 (2026-12-01T00:00:00Z) or an age (36h, 7d)"
        )),
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The checkpoint key of a window: what makes two runs the same backfill.
fn window_key(args: &BackfillArgs) -> String {
    let mut types = args.types.clone();
    types.sort();
    format!(
        "since={};until={};types={};undelivered={}",
        args.since.text,
        args.until.as_ref().map_or("now", |u| u.text.as_str()),
        types.join(","),
        args.only_undelivered
    )
}

/// Runs a backfill until the window is exhausted or `shutdown`; progress on stderr.
pub async fn run(
    config: GatewayConfig,
    args: BackfillArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<Summary> {
    let client = StripeClient::new(&config.stripe).context("setting `stripe`")?;
    let key = window_key(&args);
    let mut since = args.since.secs;
    let mut until = args.until.as_ref().map_or_else(now_secs, |u| u.secs);
    if since >= until {
        bail!("--since must be before --until (or now)");
    }
    if since < now_secs() - 30 * 86_400 {
        eprintln!(
            "backfill: note: Stripe lists only the last 30 days of events; older ones cannot be recovered"
        );
    }
    let writer = match args.dry_run {
        true => None,
        false => Some(Writer::connect(&config).await?),
    };
    let mut summary = Summary::default();
    let mut after = None;
    if let (Some(w), false) = (&writer, args.from_start)
        && let Some(cp) = w.read_checkpoint(&key).await?
        && !cp.done
    {
        // The interrupted run's window, resolved when it started.
        since = cp.since;
        until = cp.until;
        after = cp.after.clone();
        summary = cp.totals.clone();
        summary.resumed = true;
        eprintln!(
            "backfill: resuming an interrupted run: {} written so far, continuing after {}",
            summary.written,
            after.as_deref().unwrap_or("the newest event")
        );
    }
    let query = EventQuery {
        created_gte: Some(since),
        created_lt: Some(until),
        types: args.types.clone(),
        delivery_success: args.only_undelivered.then_some(false),
    };
    query.check().map_err(|e| anyhow::anyhow!("--types: {e}"))?;
    let mut pager = client.events(query.clone());
    if let Some(id) = &after {
        pager = pager.starting_after(id.clone());
    }
    let mut seen = HashSet::new();
    let mut last_created = None;
    loop {
        let page = tokio::select! {
            p = pager.next_page() => p,
            () = shutdown.cancelled() => bail!("interrupted; run the same command again to resume"),
        };
        let page = match page {
            Ok(Some(p)) => p,
            Ok(None) => break,
            // The checkpoint's event has passed Stripe's retention: continue by time instead.
            Err(StripeError::Api { status: 404, .. }) if after.is_some() => {
                let mut q = query.clone();
                q.created_lt = last_created.map(|t: i64| t + 1).or(q.created_lt);
                eprintln!("backfill: the checkpoint's event is no longer listed; continuing by time");
                after = None;
                pager = client.events(q);
                continue;
            }
            Err(e) => return Err(e).context("listing events from Stripe"),
        };
        summary.pages += 1;
        for event in &page.data {
            summary.read += 1;
            if !seen.insert(event.id.clone()) {
                summary.skipped += 1;
                continue;
            }
            let parsed = match VerifiedEvent::from_api(&event.to_bytes(), now_ms()) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(event_id = %event.id, reason = e.reason(), "event not written");
                    summary.skipped += 1;
                    continue;
                }
            };
            if let Some(w) = &writer {
                w.write(&parsed, &shutdown).await?;
            }
            summary.written += 1;
            last_created = Some(event.created);
        }
        if let (Some(w), Some(last)) = (&writer, page.data.last()) {
            w.save_checkpoint(
                &key,
                &Checkpoint {
                    since,
                    until,
                    after: Some(last.id.clone()),
                    after_created: Some(last.created),
                    done: false,
                    totals: summary.clone(),
                },
            )
            .await?;
        }
        if !args.quiet {
            let at = page
                .data
                .last()
                .map(|e| format_time(e.created))
                .unwrap_or_default();
            eprint!(
                "\rbackfill: read {}, {} {}, skipped {} (page {}, at {at})   ",
                summary.read,
                if args.dry_run { "to write" } else { "written" },
                summary.written,
                summary.skipped,
                summary.pages
            );
            let _ = std::io::stderr().flush();
        }
    }
    if !args.quiet && summary.pages > 0 {
        eprintln!();
    }
    if let Some(w) = &writer {
        w.save_checkpoint(
            &key,
            &Checkpoint {
                since,
                until,
                after: None,
                after_created: None,
                done: true,
                totals: summary.clone(),
            },
        )
        .await?;
        w.publisher.flush(Duration::from_secs(10)).await.ok();
    }
    Ok(summary)
}

fn format_time(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

/// The summary as printed at the end.
pub fn render_summary(s: &Summary, dry_run: bool, topic: &str) -> String {
    let verb = if dry_run { "would write" } else { "wrote" };
    format!(
        "backfill {}: read {} events in {} pages, {verb} {} to {topic}, skipped {}{}",
        if dry_run { "(dry run)" } else { "done" },
        s.read,
        s.pages,
        s.written,
        s.skipped,
        if s.resumed {
            " (totals include the interrupted run)"
        } else {
            ""
        }
    )
}

/// The topic writes: events through the webhook's publisher, checkpoints beside them.
struct Writer {
    publisher: KafkaPublisher,
    config: GatewayConfig,
}

impl Writer {
    async fn connect(config: &GatewayConfig) -> anyhow::Result<Self> {
        let publisher = crate::server::connect_publisher(config).await?;
        let mut specs = Vec::new();
        if config.topics.create {
            let mut spec = config.topics.spec(&config.topic);
            spec.config.insert(
                "max.message.bytes".to_string(),
                config.message_max_bytes().to_string(),
            );
            specs.push(spec);
        }
        let mut cp = TopicSpec::new(&config.backfill.checkpoint_topic, 1);
        cp.replication = config.topics.replication_factor;
        cp.config.insert("cleanup.policy".into(), "compact".into());
        specs.push(cp);
        kafka::ensure_topics(&config.kafka, &specs, "topics")
            .await
            .with_context(|| format!("creating topics {}", config.backfill.checkpoint_topic))?;
        publisher
            .prepare()
            .await
            .with_context(|| format!("registering the schema of {}", config.topic))?;
        Ok(Writer {
            publisher,
            config: config.clone(),
        })
    }

    /// Writes one event, retrying a broker or registry outage until it is durable.
    async fn write(&self, event: &VerifiedEvent, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let budget = self.config.produce_timeout();
        let written = retry::until_cancelled(
            Retry {
                what: "writing an event",
                backoff: self.config.backoff.backoff(),
                cancel: shutdown,
                health: None,
            },
            |_| async {
                self.publisher
                    .write_event(event, budget)
                    .await
                    .map_err(|e| match e {
                        e @ PublishError::TooLarge { .. } => Verdict::GiveUp(e),
                        e => Verdict::Retry(e),
                    })
            },
        )
        .await;
        match written {
            Ok(_) => Ok(()),
            Err(Stopped::Cancelled) => bail!("interrupted; run the same command again to resume"),
            Err(Stopped::GaveUp { error, .. }) => Err(anyhow::anyhow!("event {}: {error}", event.event_id())),
        }
    }

    async fn save_checkpoint(&self, key: &str, cp: &Checkpoint) -> anyhow::Result<()> {
        let value = serde_json::to_vec(cp)?;
        let producer = self.publisher.producer();
        let record = FutureRecord::to(&self.config.backfill.checkpoint_topic)
            .key(key)
            .payload(&value);
        producer
            .send(record, self.config.produce_timeout())
            .await
            .map_err(|(e, _)| anyhow::anyhow!("writing the checkpoint: {e}"))?;
        Ok(())
    }

    /// The latest checkpoint of `key`: the checkpoint topic read from the start to its end.
    async fn read_checkpoint(&self, key: &str) -> anyhow::Result<Option<Checkpoint>> {
        let mut cfg = kafka::client_config(&self.config.kafka, "gateway-backfill");
        cfg.set("group.id", "gateway-backfill-checkpoint-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let topic = self.config.backfill.checkpoint_topic.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Option<Checkpoint>> {
            let consumer: BaseConsumer = cfg.create().context("creating the checkpoint reader")?;
            let timeout = Duration::from_secs(10);
            let (_, high) = consumer
                .fetch_watermarks(&topic, 0, timeout)
                .with_context(|| format!("reading the end of {topic}"))?;
            if high <= 0 {
                return Ok(None);
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Beginning)?;
            consumer.assign(&tpl)?;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut latest = None;
            loop {
                if std::time::Instant::now() > deadline {
                    bail!("reading the checkpoints of {topic} took over 30 s");
                }
                let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let m = m.with_context(|| format!("reading {topic}"))?;
                if m.key() == Some(key.as_bytes())
                    && let Some(v) = m.payload()
                {
                    latest = serde_json::from_slice(v).ok();
                }
                if m.offset() + 1 >= high {
                    return Ok(latest);
                }
            }
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(since: &str, until: Option<&str>, types: &[&str], undelivered: bool) -> BackfillArgs {
        BackfillArgs {
            since: TimeArg::parse(since).unwrap(),
            until: until.map(|u| TimeArg::parse(u).unwrap()),
            types: types.iter().map(|t| t.to_string()).collect(),
            only_undelivered: undelivered,
            dry_run: false,
            from_start: false,
            quiet: true,
        }
    }

    #[test]
    fn times_are_unix_seconds_rfc3339_or_ages() {
        assert_eq!(parse_time("1765000000").unwrap(), 1_765_000_000);
        assert_eq!(parse_time("2026-12-01T00:00:00Z").unwrap(), 1_796_083_200);
        let now = now_secs();
        assert!((parse_time("7d").unwrap() - (now - 7 * 86_400)).abs() <= 1);
        assert!((parse_time("36h").unwrap() - (now - 36 * 3600)).abs() <= 1);
        assert!((parse_time("90m").unwrap() - (now - 5400)).abs() <= 1);
        let e = parse_time("last tuesday").unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn a_window_is_identified_by_what_was_asked() {
        // The same relative window, resolved a moment apart, is the same backfill.
        assert_eq!(
            window_key(&args("7d", None, &["customer.*"], true)),
            window_key(&args("7d", None, &["customer.*"], true))
        );
        // Type order does not matter; every other choice does.
        assert_eq!(
            window_key(&args("7d", None, &["a", "b"], false)),
            window_key(&args("7d", None, &["b", "a"], false))
        );
        let base = window_key(&args("7d", None, &[], false));
        assert_ne!(base, window_key(&args("6d", None, &[], false)));
        assert_ne!(base, window_key(&args("7d", Some("1d"), &[], false)));
        assert_ne!(base, window_key(&args("7d", None, &["customer.*"], false)));
        assert_ne!(base, window_key(&args("7d", None, &[], true)));
    }

    #[test]
    fn the_summary_says_what_happened() {
        let s = Summary {
            read: 12,
            written: 10,
            skipped: 2,
            pages: 2,
            resumed: false,
        };
        assert_eq!(
            render_summary(&s, false, "stripe.events"),
            "backfill done: read 12 events in 2 pages, wrote 10 to stripe.events, skipped 2"
        );
        assert!(render_summary(&s, true, "t").contains("would write 10"));
    }
}
