//! The `dlq` commands of every consuming stage: `list` groups the stage's dead letters by stage,
//! reason and error, `show` prints one in full (its value decoded through the schema registry when
//! it can be), and `redrive` sends chosen dead letters back to the topic they came from.
//!
//! How far a redrive got lives in Kafka only, so it survives a crash of the command and needs no
//! state beside the stage's own:
//!
//! * the consumer group `<group>.redrive` commits, per partition of the dead-letter topic, a
//!   *floor*: every dead letter below it has been redriven (the broker acknowledged the copy);
//! * the topic `<dlq topic>.redriven` (one partition, compacted; created on first need) holds one
//!   record per dead letter redriven *above* the floor, keyed `<partition>/<offset>`. Filters make
//!   those: `--reason`, `--since` and `--until` skip dead letters, and a skipped one is not redriven,
//!   so the floor stops at it and stays eligible for a later redrive with another filter (or none).
//!
//! A dead letter counts as redriven when it is below the floor or in the ledger. The floor is
//! committed, or the ledger record written, only after the broker acknowledged the redriven copy:
//! a crash in between sends that one record again on the next run, never loses it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer},
    message::{Header, Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use serde::Serialize;

use crate::{
    config::{KafkaSettings, RegistrySettings},
    dlq::headers,
    kafka::{TopicSettings, TopicSpec},
    replay::parse_datetime,
    stage::ConsumingStage,
};

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read may go without a record before the partition is declared unreadable.
const READ_STALL: Duration = Duration::from_secs(30);

/// `<stage> dlq …`.
#[derive(Debug, Clone, clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// Dead letters grouped by stage, reason and error, with counts, failure times and offsets.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter: headers, key, origin and its value, decoded as far as possible.
    Show {
        /// Offset of the dead letter in the dead-letter topic.
        offset: i64,
        /// Partition of the dead-letter topic.
        #[arg(long, default_value_t = 0)]
        partition: i32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to the topic they came from, each once.
    Redrive(RedriveArgs),
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct RedriveArgs {
    /// Only dead letters of this reason (the `dlq.error.class` header, e.g. `validation`).
    #[arg(long, value_name = "CLASS")]
    pub reason: Option<String>,
    /// Only dead letters that failed at or after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_datetime)]
    pub since: Option<i64>,
    /// Only dead letters that failed before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_datetime)]
    pub until: Option<i64>,
    /// List what would be sent; send nothing and record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as JSON (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
}

impl RedriveArgs {
    fn selects(&self, letter: &DeadLetter) -> bool {
        if let Some(reason) = &self.reason
            && letter.class() != Some(reason.as_str())
        {
            return false;
        }
        let at = letter.failed_at();
        if let Some(since) = self.since
            && at.is_none_or(|at| at < since)
        {
            return false;
        }
        if let Some(until) = self.until
            && at.is_none_or(|at| at >= until)
        {
            return false;
        }
        true
    }
}

/// Where a stage's dead letters are and how to reach them.
#[derive(Debug, Clone)]
pub struct DlqTarget {
    pub kafka: KafkaSettings,
    pub registry: Option<RegistrySettings>,
    /// The stage's name, for client ids.
    pub stage: String,
    pub dlq_topic: String,
    /// `<group>.redrive`: the group whose committed offsets are the redrive floor.
    pub progress_group: String,
    /// `<dlq topic>.redriven`: dead letters redriven above the floor.
    pub ledger_topic: String,
    /// How the ledger topic is created.
    pub topics: TopicSettings,
}

impl DlqTarget {
    pub fn of<S: ConsumingStage>(settings: &S) -> Self {
        let dlq_topic = settings.dlq_topic();
        DlqTarget {
            kafka: settings.kafka().clone(),
            registry: settings.registry().cloned(),
            stage: S::NAME.to_string(),
            ledger_topic: format!("{dlq_topic}.redriven"),
            dlq_topic,
            progress_group: format!("{}.redrive", settings.group()),
            topics: settings.topics().clone(),
        }
    }
}

/// Runs a `dlq` command for a stage.
pub async fn run<S: ConsumingStage>(settings: &S, args: DlqArgs) -> anyhow::Result<()> {
    // Logs go to stderr, so stdout stays the command's answer (and parseable with --json).
    let _telemetry = crate::telemetry::init(S::NAME, settings.telemetry())?;
    let target = DlqTarget::of(settings);
    match args.command {
        DlqCommand::List { json } => {
            let listing = tokio::task::spawn_blocking(move || list(&target))
                .await
                .context("dlq list task failed")??;
            if json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print!("{listing}");
            }
        }
        DlqCommand::Show {
            offset,
            partition,
            json,
        } => {
            let shown = show(&target, partition, offset).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                print!("{shown}");
            }
        }
        DlqCommand::Redrive(args) => {
            let json = args.json;
            let summary = tokio::task::spawn_blocking(move || redrive(&target, &args))
                .await
                .context("dlq redrive task failed")??;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{summary}");
            }
            if summary.unavailable > 0 {
                bail!(
                    "{} dead letter(s) could not be redriven (see above); they stay in {}",
                    summary.unavailable,
                    summary.topic
                );
            }
        }
    }
    Ok(())
}

/// One record read from a topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp, milliseconds since the epoch.
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    fn from_message<M: Message>(m: &M) -> Self {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        DeadLetter {
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// The last value of a header, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn stage(&self) -> Option<&str> {
        self.header(headers::STAGE)
    }

    pub fn class(&self) -> Option<&str> {
        self.header(headers::ERROR_CLASS)
    }

    pub fn failed_at(&self) -> Option<i64> {
        self.header(headers::FAILED_AT)?.parse().ok()
    }

    /// Where the record was read from when it failed.
    pub fn original(&self) -> Option<(String, i32, i64)> {
        Some((
            self.header(headers::ORIGINAL_TOPIC)?.to_string(),
            self.header(headers::ORIGINAL_PARTITION)?.parse().ok()?,
            self.header(headers::ORIGINAL_OFFSET)?.parse().ok()?,
        ))
    }

    /// What groups dead letters of one reason further: the Dataverse error code when the sink
    /// recorded one (`dlq.dataverse.code`), else the start of the error message up to its first
    /// colon (where details such as ids begin), at most 60 characters.
    pub fn detail(&self) -> String {
        if let Some(code) = self.header("dlq.dataverse.code").filter(|c| !c.is_empty()) {
            return code.to_string();
        }
        let message = self.header(headers::ERROR_MESSAGE).unwrap_or("");
        let head = message.split(':').next().unwrap_or("").trim();
        head.chars().take(60).collect()
    }

    fn key_text(&self) -> String {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_else(|| "-".into())
    }
}

fn admin_consumer(target: &DlqTarget) -> anyhow::Result<BaseConsumer> {
    let mut config: ClientConfig =
        crate::kafka::client_config(&target.kafka, &format!("{}-dlq", target.stage));
    config
        .set("group.id", &target.progress_group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    config.create().context("creating the Kafka consumer")
}

/// The partitions of `topic`, or `None` when it does not exist.
fn partitions(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Option<Vec<i32>>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("reading the metadata of topic {topic}"))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| {
            let mut p: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
            p.sort_unstable();
            p
        })
        .filter(|p| !p.is_empty()))
}

/// Reads the records of one partition in `[from, to)`.
fn read_range(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
) -> anyhow::Result<Vec<DeadLetter>> {
    let mut out = Vec::new();
    if from >= to {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
    consumer.assign(&tpl)?;
    let mut last_progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.topic() == topic && m.partition() == partition => {
                last_progress = Instant::now();
                if m.offset() >= to {
                    break;
                }
                out.push(DeadLetter::from_message(&m));
                if m.offset() + 1 >= to {
                    break;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(topic, partition, error = %e, "read error, retrying");
            }
            None => {
                // Compaction and transaction markers leave offsets without records: the position
                // reaching the end means everything in range was read.
                let position = consumer
                    .position()
                    .ok()
                    .and_then(|p| p.find_partition(topic, partition).map(|e| e.offset()));
                if let Some(Offset::Offset(o)) = position
                    && o >= to
                {
                    break;
                }
                if last_progress.elapsed() > READ_STALL {
                    bail!(
                        "reading {topic}/{partition} stalled at offset {} (expected records up to {})",
                        out.last().map_or(from, |l: &DeadLetter| l.offset + 1),
                        to - 1
                    );
                }
            }
        }
    }
    consumer.unassign()?;
    Ok(out)
}

/// What has been redriven: the committed floor per dead-letter partition and the ledger.
#[derive(Debug, Default)]
struct Progress {
    floor: HashMap<i32, i64>,
    ledger: HashSet<(i32, i64)>,
}

impl Progress {
    fn is_redriven(&self, partition: i32, offset: i64) -> bool {
        self.floor.get(&partition).is_some_and(|f| offset < *f) || self.ledger.contains(&(partition, offset))
    }
}

fn ledger_key(partition: i32, offset: i64) -> String {
    format!("{partition}/{offset}")
}

fn parse_ledger_key(key: &[u8]) -> Option<(i32, i64)> {
    let (p, o) = std::str::from_utf8(key).ok()?.split_once('/')?;
    Some((p.parse().ok()?, o.parse().ok()?))
}

fn load_progress(consumer: &BaseConsumer, target: &DlqTarget, parts: &[i32]) -> anyhow::Result<Progress> {
    let mut progress = Progress::default();
    let mut tpl = TopicPartitionList::new();
    for p in parts {
        tpl.add_partition(&target.dlq_topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, TIMEOUT)
        .with_context(|| format!("reading the committed offsets of group {}", target.progress_group))?;
    for e in committed.elements() {
        if let Offset::Offset(o) = e.offset() {
            progress.floor.insert(e.partition(), o);
        }
    }
    if let Some(ledger_parts) = partitions(consumer, &target.ledger_topic)? {
        for p in ledger_parts {
            let (low, high) = consumer.fetch_watermarks(&target.ledger_topic, p, TIMEOUT)?;
            for record in read_range(consumer, &target.ledger_topic, p, low, high)? {
                if let Some(entry) = record.key.as_deref().and_then(parse_ledger_key) {
                    progress.ledger.insert(entry);
                }
            }
        }
    }
    Ok(progress)
}

/// Every retained dead letter of every partition, with the partitions' watermarks.
fn read_dlq(
    consumer: &BaseConsumer,
    target: &DlqTarget,
    from: impl Fn(i32) -> i64,
) -> anyhow::Result<(Vec<i32>, Vec<DeadLetter>)> {
    let topic = &target.dlq_topic;
    let parts = partitions(consumer, topic)?.with_context(|| {
        format!("dead-letter topic {topic} does not exist (nothing was dead-lettered yet?)")
    })?;
    let mut letters = Vec::new();
    for p in &parts {
        let (low, high) = consumer.fetch_watermarks(topic, *p, TIMEOUT)?;
        letters.extend(read_range(consumer, topic, *p, from(*p).max(low), high)?);
    }
    Ok((parts, letters))
}

fn format_millis(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// One line of `dlq list`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ListGroup {
    pub stage: String,
    pub class: String,
    pub detail: String,
    pub count: u64,
    /// Of `count`, how many were already redriven.
    pub redriven: u64,
    pub first_failed_at: Option<String>,
    pub last_failed_at: Option<String>,
    /// Per dead-letter partition, the first and last offset of the group.
    pub offsets: BTreeMap<i32, (i64, i64)>,
}

/// The answer of `dlq list`.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub topic: String,
    pub total: u64,
    pub redriven: u64,
    pub groups: Vec<ListGroup>,
}

/// Groups dead letters by (stage, class, detail), most numerous first.
pub fn group_letters(letters: &[DeadLetter], redriven: impl Fn(&DeadLetter) -> bool) -> Vec<ListGroup> {
    struct Acc {
        count: u64,
        redriven: u64,
        first: Option<i64>,
        last: Option<i64>,
        offsets: BTreeMap<i32, (i64, i64)>,
    }
    let mut groups: BTreeMap<(String, String, String), Acc> = BTreeMap::new();
    for l in letters {
        let key = (
            l.stage().unwrap_or("-").to_string(),
            l.class().unwrap_or("-").to_string(),
            l.detail(),
        );
        let acc = groups.entry(key).or_insert(Acc {
            count: 0,
            redriven: 0,
            first: None,
            last: None,
            offsets: BTreeMap::new(),
        });
        acc.count += 1;
        acc.redriven += u64::from(redriven(l));
        if let Some(at) = l.failed_at() {
            acc.first = Some(acc.first.map_or(at, |f| f.min(at)));
            acc.last = Some(acc.last.map_or(at, |f| f.max(at)));
        }
        let range = acc.offsets.entry(l.partition).or_insert((l.offset, l.offset));
        range.0 = range.0.min(l.offset);
        range.1 = range.1.max(l.offset);
    }
    let mut out: Vec<ListGroup> = groups
        .into_iter()
        .map(|((stage, class, detail), a)| ListGroup {
            stage,
            class,
            detail,
            count: a.count,
            redriven: a.redriven,
            first_failed_at: a.first.map(format_millis),
            last_failed_at: a.last.map(format_millis),
            offsets: a.offsets,
        })
        .collect();
    out.sort_by_key(|g| std::cmp::Reverse(g.count));
    out
}

/// `dlq list`. Blocking.
pub fn list(target: &DlqTarget) -> anyhow::Result<Listing> {
    let consumer = admin_consumer(target)?;
    let (parts, letters) = read_dlq(&consumer, target, |_| 0)?;
    let progress = load_progress(&consumer, target, &parts)?;
    let groups = group_letters(&letters, |l| progress.is_redriven(l.partition, l.offset));
    Ok(Listing {
        topic: target.dlq_topic.clone(),
        total: groups.iter().map(|g| g.count).sum(),
        redriven: groups.iter().map(|g| g.redriven).sum(),
        groups,
    })
}

impl std::fmt::Display for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: {} dead letters, {} redriven, {} pending",
            self.topic,
            self.total,
            self.redriven,
            self.total - self.redriven
        )?;
        if self.groups.is_empty() {
            return Ok(());
        }
        let rows: Vec<[String; 8]> = self
            .groups
            .iter()
            .map(|g| {
                let offsets = g
                    .offsets
                    .iter()
                    .map(|(p, (a, b))| {
                        if a == b {
                            format!("{p}:{a}")
                        } else {
                            format!("{p}:{a}-{b}")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                [
                    g.stage.clone(),
                    g.class.clone(),
                    g.detail.clone(),
                    g.count.to_string(),
                    (g.count - g.redriven).to_string(),
                    g.first_failed_at.clone().unwrap_or_else(|| "-".into()),
                    g.last_failed_at.clone().unwrap_or_else(|| "-".into()),
                    offsets,
                ]
            })
            .collect();
        let titles = [
            "STAGE",
            "REASON",
            "ERROR",
            "COUNT",
            "PENDING",
            "FIRST FAILED",
            "LAST FAILED",
            "OFFSETS (partition:first-last)",
        ];
        let mut widths = titles.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut s = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i == cells.len() - 1 {
                    s.push_str(cell);
                } else if i == 3 || i == 4 {
                    let _ = write!(s, "{cell:>w$}  ");
                } else {
                    let _ = write!(s, "{cell:<w$}  ");
                }
            }
            s
        };
        writeln!(f, "{}", line(titles.to_vec()))?;
        for row in &rows {
            writeln!(f, "{}", line(row.iter().map(String::as_str).collect()))?;
        }
        Ok(())
    }
}

/// The value of a record as `show` presents it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum ShownValue {
    /// No value: the dead letter says why in `dlq.payload.omitted`.
    Absent,
    /// Confluent wire-format Avro, decoded with the writer's schema.
    Avro {
        schema_id: u32,
        schema: String,
        value: serde_json::Value,
    },
    /// Not decodable (or no registry configured): the bytes as text where they are UTF-8, and in hex.
    Raw {
        length: usize,
        utf8: Option<String>,
        hex: String,
        why: String,
    },
}

/// The answer of `dlq show`.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<String>,
    pub key: Option<String>,
    pub original: Option<Origin>,
    pub headers: Vec<(String, Option<String>)>,
    pub value: ShownValue,
}

#[derive(Debug, Clone, Serialize)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Shows at most this many bytes of an undecodable value.
const PREVIEW_BYTES: usize = 4096;

fn raw_value(bytes: &[u8], why: String) -> ShownValue {
    let shown = &bytes[..bytes.len().min(PREVIEW_BYTES)];
    let hex = shown.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    ShownValue::Raw {
        length: bytes.len(),
        utf8: std::str::from_utf8(shown).ok().map(str::to_string),
        hex,
        why,
    }
}

/// `dlq show`.
pub async fn show(target: &DlqTarget, partition: i32, offset: i64) -> anyhow::Result<Shown> {
    let reader = target.clone();
    let letter = tokio::task::spawn_blocking(move || -> anyhow::Result<DeadLetter> {
        let consumer = admin_consumer(&reader)?;
        let topic = &reader.dlq_topic;
        let parts = partitions(&consumer, topic)?.with_context(|| format!("topic {topic} does not exist"))?;
        if !parts.contains(&partition) {
            bail!("topic {topic} has no partition {partition}");
        }
        let (low, high) = consumer.fetch_watermarks(topic, partition, TIMEOUT)?;
        if offset < low || offset >= high {
            bail!("{topic}/{partition} holds offsets {low}..{high}; {offset} is not among them");
        }
        read_range(&consumer, topic, partition, offset, offset + 1)?
            .into_iter()
            .find(|l| l.offset == offset)
            .with_context(|| {
                format!("{topic}/{partition} has no record at offset {offset} (compacted away?)")
            })
    })
    .await
    .context("dlq show task failed")??;

    let value = match (&letter.value, &target.registry) {
        (None, _) => ShownValue::Absent,
        (Some(bytes), None) => raw_value(bytes, "this stage has no schema registry configured".into()),
        (Some(bytes), Some(registry)) => match schemas::Codec::new(&registry.codec_config()) {
            Err(e) => raw_value(bytes, e.to_string()),
            Ok(codec) => match codec.decode_json(bytes).await {
                Ok((schema_id, schema, value)) => ShownValue::Avro {
                    schema_id,
                    schema,
                    value,
                },
                Err(e) => raw_value(bytes, e.to_string()),
            },
        },
    };
    Ok(Shown {
        topic: target.dlq_topic.clone(),
        partition,
        offset,
        timestamp: letter.timestamp.map(format_millis),
        key: letter
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        original: letter.original().map(|(topic, partition, offset)| Origin {
            topic,
            partition,
            offset,
        }),
        headers: letter
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_deref().map(|v| String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect(),
        value,
    })
}

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}/{} offset {}", self.topic, self.partition, self.offset)?;
        writeln!(f, "timestamp: {}", self.timestamp.as_deref().unwrap_or("-"))?;
        writeln!(f, "key:       {}", self.key.as_deref().unwrap_or("-"))?;
        match &self.original {
            Some(o) => writeln!(f, "original:  {}/{} offset {}", o.topic, o.partition, o.offset)?,
            None => writeln!(f, "original:  -")?,
        }
        writeln!(f, "headers:")?;
        for (k, v) in &self.headers {
            let v = if k == headers::FAILED_AT {
                v.as_deref()
                    .and_then(|v| v.parse().ok())
                    .map(|ms: i64| format!("{ms} ({})", format_millis(ms)))
            } else {
                v.clone()
            };
            writeln!(f, "  {k}: {}", v.as_deref().unwrap_or("(null)"))?;
        }
        match &self.value {
            ShownValue::Absent => writeln!(f, "value: none (see dlq.payload.omitted)"),
            ShownValue::Avro {
                schema_id,
                schema,
                value,
            } => {
                writeln!(f, "value: Avro {schema} (schema id {schema_id})")?;
                writeln!(
                    f,
                    "{}",
                    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
                )
            }
            ShownValue::Raw {
                length,
                utf8,
                hex,
                why,
            } => {
                writeln!(f, "value: {length} bytes, not decoded ({why})")?;
                if let Some(text) = utf8 {
                    writeln!(f, "  utf8: {text}")?;
                }
                writeln!(f, "  hex:  {hex}")
            }
        }
    }
}

/// What became of one dead letter in a redrive.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RedriveRow {
    pub partition: i32,
    pub offset: i64,
    pub class: Option<String>,
    pub key: String,
    pub to_topic: Option<String>,
    pub to_partition: Option<i32>,
    /// `sent`, `would_send` (dry run), `unavailable`.
    pub outcome: String,
    /// The offset the copy got, when sent.
    pub to_offset: Option<i64>,
    pub note: Option<String>,
}

/// The answer of `dlq redrive`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RedriveSummary {
    pub topic: String,
    pub dry_run: bool,
    pub sent: u64,
    /// Dry run: what would be sent.
    pub would_send: u64,
    pub already_redriven: u64,
    pub skipped_by_filter: u64,
    pub unavailable: u64,
    pub rows: Vec<RedriveRow>,
}

impl std::fmt::Display for RedriveSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dry_run {
            writeln!(f, "dry run: nothing sent, nothing recorded")?;
            for r in self.rows.iter().filter(|r| r.outcome == "would_send") {
                writeln!(
                    f,
                    "  would send {}/{} ({}, key {}) to {}/{}",
                    r.partition,
                    r.offset,
                    r.class.as_deref().unwrap_or("-"),
                    r.key,
                    r.to_topic.as_deref().unwrap_or("-"),
                    r.to_partition.map_or_else(|| "-".into(), |p| p.to_string()),
                )?;
            }
        }
        for r in self.rows.iter().filter(|r| r.outcome == "unavailable") {
            writeln!(
                f,
                "  cannot redrive {}/{}: {}",
                r.partition,
                r.offset,
                r.note.as_deref().unwrap_or("")
            )?;
        }
        writeln!(
            f,
            "{}: {} {}, {} already redriven, {} skipped by the filter, {} unavailable",
            self.topic,
            if self.dry_run { self.would_send } else { self.sent },
            if self.dry_run { "would be sent" } else { "sent" },
            self.already_redriven,
            self.skipped_by_filter,
            self.unavailable
        )
    }
}

/// A record ready to go back where it came from.
struct Outgoing {
    topic: String,
    partition: i32,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

/// The copy of `letter` to send, or why there is none. For a dead letter without its value, the
/// original is read again from its topic, when still retained.
fn outgoing(consumer: &BaseConsumer, target: &DlqTarget, letter: &DeadLetter) -> Result<Outgoing, String> {
    let (topic, partition, offset) = letter.original().ok_or_else(|| {
        "the dead letter does not say where it came from (dlq.original.* headers)".to_string()
    })?;
    let from = format!("{}/{}/{}", target.dlq_topic, letter.partition, letter.offset);
    let strip = |headers: &[(String, Option<Vec<u8>>)]| {
        let mut h: Vec<(String, Option<Vec<u8>>)> = headers
            .iter()
            .filter(|(k, _)| !k.starts_with("dlq."))
            .cloned()
            .collect();
        h.push((
            headers::REDRIVEN_FROM.to_string(),
            Some(from.clone().into_bytes()),
        ));
        h
    };
    if letter.header(headers::PAYLOAD_OMITTED).is_none() {
        return Ok(Outgoing {
            topic,
            partition,
            key: letter.key.clone(),
            value: letter.value.clone(),
            headers: strip(&letter.headers),
        });
    }
    let gone = |why: String| {
        format!("the dead letter carries no value and the original {topic}/{partition}/{offset} {why}")
    };
    let (low, high) = consumer
        .fetch_watermarks(&topic, partition, TIMEOUT)
        .map_err(|e| gone(format!("cannot be looked up: {e}")))?;
    if offset < low {
        return Err(gone(format!(
            "is no longer retained (the partition holds {low}..{high})"
        )));
    }
    if offset >= high {
        return Err(gone(format!(
            "is not in the topic (the partition holds {low}..{high}; was the topic recreated?)"
        )));
    }
    let original = read_range(consumer, &topic, partition, offset, offset + 1)
        .map_err(|e| gone(format!("cannot be read: {e:#}")))?
        .into_iter()
        .find(|r| r.offset == offset)
        .ok_or_else(|| gone("is no longer retained (compacted away)".into()))?;
    Ok(Outgoing {
        topic,
        partition,
        key: original.key,
        value: original.value,
        headers: strip(&original.headers),
    })
}

fn send(producer: &FutureProducer, out: &Outgoing) -> anyhow::Result<i64> {
    let mut h = OwnedHeaders::new();
    for (key, value) in &out.headers {
        h = h.insert(Header {
            key,
            value: value.as_deref(),
        });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(&out.topic).partition(out.partition).headers(h);
    if let Some(k) = &out.key {
        record = record.key(k.as_slice());
    }
    if let Some(v) = &out.value {
        record = record.payload(v.as_slice());
    }
    let delivered = futures::executor::block_on(producer.send(record, TIMEOUT))
        .map_err(|(e, _)| anyhow::anyhow!("sending to {}/{}: {e}", out.topic, out.partition))?;
    Ok(delivered.offset)
}

fn ensure_ledger(target: &DlqTarget) -> anyhow::Result<()> {
    let spec = TopicSpec {
        name: target.ledger_topic.clone(),
        partitions: 1,
        replication: target.topics.replication_factor,
        config: BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]),
    };
    // Called on a blocking thread of the command's runtime, which may block on it.
    tokio::runtime::Handle::current()
        .block_on(crate::kafka::ensure_topics(&target.kafka, &[spec], "topics"))
        .map_err(|e| anyhow::anyhow!("creating the redrive ledger topic {}: {e}", target.ledger_topic))
}

/// `dlq redrive`. Blocking.
pub fn redrive(target: &DlqTarget, args: &RedriveArgs) -> anyhow::Result<RedriveSummary> {
    let consumer = admin_consumer(target)?;
    let parts = partitions(&consumer, &target.dlq_topic)?.with_context(|| {
        format!(
            "dead-letter topic {} does not exist (nothing was dead-lettered yet?)",
            target.dlq_topic
        )
    })?;
    let progress = load_progress(&consumer, target, &parts)?;
    let (_, letters) = read_dlq(&consumer, target, |p| {
        progress.floor.get(&p).copied().unwrap_or(0)
    })?;
    let mut summary = RedriveSummary {
        topic: target.dlq_topic.clone(),
        dry_run: args.dry_run,
        ..RedriveSummary::default()
    };
    // Dead letters below the floor are not read again; they count as already redriven.
    for p in &parts {
        let (low, high) = consumer.fetch_watermarks(&target.dlq_topic, *p, TIMEOUT)?;
        let floor = progress.floor.get(p).copied().unwrap_or(0);
        summary.already_redriven += u64::try_from(floor.min(high) - low).unwrap_or(0);
    }
    let producer = if args.dry_run {
        None
    } else {
        Some(
            crate::kafka::producer(&target.kafka, &format!("{}-redrive", target.stage), TIMEOUT)
                .context("creating the Kafka producer")?,
        )
    };
    let mut ledger_ready = false;
    let mut by_partition: BTreeMap<i32, Vec<&DeadLetter>> = BTreeMap::new();
    for l in &letters {
        by_partition.entry(l.partition).or_default().push(l);
    }
    for (partition, letters) in by_partition {
        // The floor moves while every dead letter before the current one is redriven.
        let mut floor_open = true;
        for letter in letters {
            let row = |outcome: &str, to: Option<&Outgoing>, to_offset, note| RedriveRow {
                partition,
                offset: letter.offset,
                class: letter.class().map(str::to_string),
                key: letter.key_text(),
                to_topic: to
                    .map(|o| o.topic.clone())
                    .or_else(|| letter.original().map(|o| o.0)),
                to_partition: to.map(|o| o.partition).or_else(|| letter.original().map(|o| o.1)),
                outcome: outcome.to_string(),
                to_offset,
                note,
            };
            if progress.is_redriven(partition, letter.offset) {
                summary.already_redriven += 1;
                if floor_open && !args.dry_run {
                    commit_floor(&consumer, target, partition, letter.offset + 1)?;
                }
                continue;
            }
            if !args.selects(letter) {
                summary.skipped_by_filter += 1;
                floor_open = false;
                continue;
            }
            let out = match outgoing(&consumer, target, letter) {
                Ok(out) => out,
                Err(why) => {
                    eprintln!(
                        "cannot redrive {}/{partition}/{}: {why}",
                        target.dlq_topic, letter.offset
                    );
                    summary.unavailable += 1;
                    summary.rows.push(row("unavailable", None, None, Some(why)));
                    floor_open = false;
                    continue;
                }
            };
            let Some(producer) = &producer else {
                summary.would_send += 1;
                summary.rows.push(row("would_send", Some(&out), None, None));
                continue;
            };
            let to_offset = send(producer, &out)?;
            eprintln!(
                "sent {}/{partition}/{} ({}, key {}) to {}/{}/{to_offset}",
                target.dlq_topic,
                letter.offset,
                letter.class().unwrap_or("-"),
                letter.key_text(),
                out.topic,
                out.partition
            );
            summary.sent += 1;
            summary.rows.push(row("sent", Some(&out), Some(to_offset), None));
            // Recorded only now that the broker has the copy.
            if floor_open {
                commit_floor(&consumer, target, partition, letter.offset + 1)?;
            } else {
                if !ledger_ready {
                    ensure_ledger(target)?;
                    ledger_ready = true;
                }
                let key = ledger_key(partition, letter.offset);
                send(
                    producer,
                    &Outgoing {
                        topic: target.ledger_topic.clone(),
                        partition: 0,
                        key: Some(key.into_bytes()),
                        value: Some(Vec::new()),
                        headers: vec![(
                            headers::REDRIVEN_FROM.to_string(),
                            Some(format!("{}/{partition}/{}", target.dlq_topic, letter.offset).into_bytes()),
                        )],
                    },
                )
                .with_context(|| {
                    format!(
                        "recording {}/{partition}/{} as redriven in {} (it was sent: a later redrive sends it again)",
                        target.dlq_topic, letter.offset, target.ledger_topic
                    )
                })?;
            }
        }
    }
    Ok(summary)
}

fn commit_floor(
    consumer: &BaseConsumer,
    target: &DlqTarget,
    partition: i32,
    floor: i64,
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&target.dlq_topic, partition, Offset::Offset(floor))?;
    consumer.commit(&tpl, CommitMode::Sync).with_context(|| {
        format!(
            "committing redrive progress {}/{partition} = {floor} for group {}",
            target.dlq_topic, target.progress_group
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(partition: i32, offset: i64, class: &str, message: &str, failed_at: i64) -> DeadLetter {
        DeadLetter {
            partition,
            offset,
            timestamp: None,
            key: Some(b"cus_1".to_vec()),
            value: Some(vec![0, 0, 0, 0, 1, 2]),
            headers: vec![
                ("traceparent".into(), Some(b"00-abc-def-01".to_vec())),
                (headers::STAGE.into(), Some(b"sink-dataverse".to_vec())),
                (headers::ERROR_CLASS.into(), Some(class.as_bytes().to_vec())),
                (headers::ERROR_MESSAGE.into(), Some(message.as_bytes().to_vec())),
                (
                    headers::ORIGINAL_TOPIC.into(),
                    Some(b"customers.normalized".to_vec()),
                ),
                (headers::ORIGINAL_PARTITION.into(), Some(b"2".to_vec())),
                (headers::ORIGINAL_OFFSET.into(), Some(b"41".to_vec())),
                (
                    headers::FAILED_AT.into(),
                    Some(failed_at.to_string().into_bytes()),
                ),
            ],
        }
    }

    #[test]
    fn letters_group_by_stage_reason_and_error_with_counts_times_and_offsets() {
        let letters = vec![
            letter(0, 3, "validation", "Dataverse refused: cus_1 bad", 1_000),
            letter(0, 7, "validation", "Dataverse refused: cus_2 bad", 3_000),
            letter(1, 2, "validation", "Dataverse refused: cus_3 bad", 2_000),
            letter(
                1,
                4,
                "undecodable",
                "payload with schema id 9 does not decode",
                500,
            ),
        ];
        let groups = group_letters(&letters, |l| l.offset == 3);
        assert_eq!(groups.len(), 2);
        let v = &groups[0];
        assert_eq!(
            (v.class.as_str(), v.detail.as_str()),
            ("validation", "Dataverse refused")
        );
        assert_eq!((v.count, v.redriven), (3, 1));
        assert_eq!(v.first_failed_at.as_deref(), Some("1970-01-01T00:00:01Z"));
        assert_eq!(v.last_failed_at.as_deref(), Some("1970-01-01T00:00:03Z"));
        assert_eq!(v.offsets, BTreeMap::from([(0, (3, 7)), (1, (2, 2))]));
        assert_eq!(groups[1].count, 1);
    }

    #[test]
    fn the_dataverse_code_groups_sink_rejections() {
        let mut l = letter(
            0,
            1,
            "validation",
            "Dataverse refused the change (400 0x80040265): x",
            1,
        );
        l.headers
            .push(("dlq.dataverse.code".into(), Some(b"0x80040265".to_vec())));
        assert_eq!(l.detail(), "0x80040265");
    }

    #[test]
    fn filters_select_by_reason_and_failure_time() {
        let l = letter(0, 1, "validation", "m", 5_000);
        let args = |reason: Option<&str>, since, until| RedriveArgs {
            reason: reason.map(str::to_string),
            since,
            until,
            ..RedriveArgs::default()
        };
        assert!(args(None, None, None).selects(&l));
        assert!(args(Some("validation"), Some(5_000), Some(5_001)).selects(&l));
        assert!(!args(Some("undecodable"), None, None).selects(&l));
        assert!(!args(None, Some(5_001), None).selects(&l));
        assert!(!args(None, None, Some(5_000)).selects(&l), "--until is exclusive");
    }

    #[test]
    fn ledger_keys_round_trip_and_progress_combines_floor_and_ledger() {
        assert_eq!(parse_ledger_key(ledger_key(3, 17).as_bytes()), Some((3, 17)));
        assert_eq!(parse_ledger_key(b"garbage"), None);
        let progress = Progress {
            floor: HashMap::from([(0, 5)]),
            ledger: HashSet::from([(0, 9), (1, 0)]),
        };
        assert!(progress.is_redriven(0, 4));
        assert!(!progress.is_redriven(0, 5));
        assert!(progress.is_redriven(0, 9));
        assert!(progress.is_redriven(1, 0));
        assert!(!progress.is_redriven(1, 1));
    }

    #[test]
    fn cli_parses_the_subcommands() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            dlq: DlqArgs,
        }
        let c = Cli::try_parse_from(["x", "show", "12", "--partition", "2"]).unwrap();
        assert!(matches!(
            c.dlq.command,
            DlqCommand::Show {
                offset: 12,
                partition: 2,
                json: false
            }
        ));
        let c = Cli::try_parse_from([
            "x",
            "redrive",
            "--reason",
            "validation",
            "--since",
            "1970-01-01T00:00:01Z",
            "--dry-run",
        ])
        .unwrap();
        let DlqCommand::Redrive(r) = c.dlq.command else {
            panic!("redrive")
        };
        assert_eq!(
            (r.reason.as_deref(), r.since, r.dry_run),
            (Some("validation"), Some(1000), true)
        );
        assert!(Cli::try_parse_from(["x", "redrive", "--since", "yesterday"]).is_err());
    }
}
