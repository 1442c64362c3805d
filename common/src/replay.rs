//! Rewinding (or fast-forwarding) a consumer group: set its committed offsets for a topic to an
//! offset, a point in time, the earliest or the latest record, per partition or for all of them.
//! As with Kafka's own tooling, the group must be inactive, so the plan is checked against the
//! group's state first and refused when members are active; a broker that cannot describe groups
//! makes the check fail closed, and `assume_inactive` is the explicit override.

use std::{fmt, time::Duration};

use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer},
    error::KafkaError,
};

use crate::config::KafkaSettings;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Where to move the committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// This offset (clamped to what the partition holds).
    Offset(i64),
    /// The first record at or after this time, milliseconds since the epoch.
    Timestamp(i64),
    Earliest,
    Latest,
}

/// The command-line form, shared by every consuming stage's `replay` subcommand.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to_offset", "to_datetime", "to_earliest", "to_latest"])))]
pub struct ReplayArgs {
    /// Topic whose offsets to reset (default: the stage's input topic).
    #[arg(long)]
    pub topic: Option<String>,
    /// Partition to reset; repeat for several. Default: all partitions.
    #[arg(long = "partition", value_name = "N")]
    pub partitions: Vec<i32>,
    /// Reset to this offset.
    #[arg(long, value_name = "OFFSET")]
    pub to_offset: Option<i64>,
    /// Reset to the first record at or after this time (RFC 3339, e.g. 2026-11-27T10:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_datetime)]
    pub to_datetime: Option<i64>,
    /// Reset to the earliest record still held.
    #[arg(long)]
    pub to_earliest: bool,
    /// Reset to the end (skip everything not yet consumed).
    #[arg(long)]
    pub to_latest: bool,
    /// Print the plan without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Skip the active-member check, for brokers that cannot describe groups. Stop every member of
    /// the group first: offsets committed by a live member would overwrite the reset.
    #[arg(long)]
    pub assume_inactive: bool,
}

impl ReplayArgs {
    pub fn target(&self) -> ResetTo {
        match (self.to_offset, self.to_datetime) {
            (Some(o), _) => ResetTo::Offset(o),
            (_, Some(t)) => ResetTo::Timestamp(t),
            _ if self.to_earliest => ResetTo::Earliest,
            _ => ResetTo::Latest,
        }
    }
}

/// Parses an RFC 3339 time into milliseconds since the epoch.
pub fn parse_datetime(s: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("`{s}` is not an RFC 3339 time such as 2026-11-27T10:00:00Z: {e}"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| format!("`{s}` is out of range"))
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("group `{group}` has active members (state {state}, {members} members): stop them first")]
    ActiveMembers {
        group: String,
        state: String,
        members: usize,
    },
    #[error(
        "cannot tell whether group `{group}` has active members ({reason}); stop every member of the group and run again with --assume-inactive"
    )]
    CannotCheckMembers { group: String, reason: String },
    #[error("topic `{0}` does not exist")]
    UnknownTopic(String),
    #[error("topic `{topic}` has no partition {partition}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRow {
    pub partition: i32,
    /// The committed offset now; `None` when the group never committed one.
    pub current: Option<i64>,
    pub new: i64,
    /// The partition's earliest and next offsets.
    pub low: i64,
    pub high: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub group: String,
    pub topic: String,
    pub rows: Vec<PlanRow>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "group {} topic {}", self.group, self.topic)?;
        writeln!(
            f,
            "{:>9} {:>12} {:>12} {:>12} {:>12}",
            "partition", "current", "new", "earliest", "end"
        )?;
        for r in &self.rows {
            let current = r.current.map_or_else(|| "-".to_string(), |c| c.to_string());
            writeln!(
                f,
                "{:>9} {:>12} {:>12} {:>12} {:>12}",
                r.partition, current, r.new, r.low, r.high
            )?;
        }
        Ok(())
    }
}

/// The new offset for a partition holding `[low, high)`; `at_time` is the broker's answer to a
/// time lookup (`None` when no record is that recent).
pub fn target_offset(to: ResetTo, low: i64, high: i64, at_time: Option<i64>) -> i64 {
    match to {
        ResetTo::Offset(o) => o.clamp(low, high),
        ResetTo::Timestamp(_) => at_time.unwrap_or(high).clamp(low, high),
        ResetTo::Earliest => low,
        ResetTo::Latest => high,
    }
}

/// Whether a described group may have its offsets reset.
pub fn group_is_inactive(state: &str, members: usize) -> bool {
    members == 0 && matches!(state, "Empty" | "Dead" | "")
}

fn admin_consumer(kafka: &KafkaSettings, group: &str) -> Result<BaseConsumer, KafkaError> {
    let mut config: ClientConfig = crate::kafka::client_config(kafka, "pipeline-replay");
    config.set("group.id", group).set("enable.auto.commit", "false");
    config.create()
}

/// Refuses when the group has active members, or when that cannot be known.
pub fn check_inactive(kafka: &KafkaSettings, group: &str) -> Result<(), ReplayError> {
    let consumer = admin_consumer(kafka, group)?;
    let list =
        consumer
            .fetch_group_list(Some(group), TIMEOUT)
            .map_err(|e| ReplayError::CannotCheckMembers {
                group: group.to_string(),
                reason: e.to_string(),
            })?;
    match list.groups().iter().find(|g| g.name() == group) {
        None => Ok(()),
        Some(g) if group_is_inactive(g.state(), g.members().len()) => Ok(()),
        Some(g) => Err(ReplayError::ActiveMembers {
            group: group.to_string(),
            state: g.state().to_string(),
            members: g.members().len(),
        }),
    }
}

/// Works out the move for every selected partition. Changes nothing. Blocking.
pub fn plan(
    kafka: &KafkaSettings,
    group: &str,
    topic: &str,
    partitions: &[i32],
    to: ResetTo,
) -> Result<Plan, ReplayError> {
    let consumer = admin_consumer(kafka, group)?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let all: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .filter(|p: &Vec<i32>| !p.is_empty())
        .ok_or_else(|| ReplayError::UnknownTopic(topic.to_string()))?;
    let selected: Vec<i32> = if partitions.is_empty() {
        all.clone()
    } else {
        partitions.to_vec()
    };
    if let Some(p) = selected.iter().find(|p| !all.contains(p)) {
        return Err(ReplayError::UnknownPartition {
            topic: topic.to_string(),
            partition: *p,
        });
    }

    let mut tpl = TopicPartitionList::new();
    for p in &selected {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl.clone(), TIMEOUT)?;
    let at_times = match to {
        ResetTo::Timestamp(ms) => {
            let mut query = TopicPartitionList::new();
            for p in &selected {
                query.add_partition_offset(topic, *p, Offset::Offset(ms))?;
            }
            Some(consumer.offsets_for_times(query, TIMEOUT)?)
        }
        _ => None,
    };

    let mut rows = Vec::new();
    for p in selected {
        let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
        let current = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        };
        let at_time = at_times
            .as_ref()
            .and_then(|t| match t.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            });
        rows.push(PlanRow {
            partition: p,
            current,
            new: target_offset(to, low, high, at_time),
            low,
            high,
        });
    }
    Ok(Plan {
        group: group.to_string(),
        topic: topic.to_string(),
        rows,
    })
}

/// Commits the plan's offsets for the group. Blocking.
pub fn apply(kafka: &KafkaSettings, plan: &Plan) -> Result<(), ReplayError> {
    let consumer = admin_consumer(kafka, &plan.group)?;
    let mut tpl = TopicPartitionList::new();
    for r in &plan.rows {
        tpl.add_partition_offset(&plan.topic, r.partition, Offset::Offset(r.new))?;
    }
    consumer.commit(&tpl, CommitMode::Sync)?;
    Ok(())
}

/// The whole `replay` command: check the group is inactive (unless told to assume so), plan,
/// print, and apply unless it is a dry run. Returns the plan. Blocking.
pub fn run(
    kafka: &KafkaSettings,
    group: &str,
    default_topic: &str,
    args: &ReplayArgs,
) -> Result<Plan, ReplayError> {
    let topic = args.topic.as_deref().unwrap_or(default_topic);
    let membership = if args.assume_inactive {
        Ok(())
    } else {
        check_inactive(kafka, group)
    };
    let plan = plan(kafka, group, topic, &args.partitions, args.target())?;
    if args.dry_run {
        let note = match &membership {
            Ok(()) if args.assume_inactive => "group assumed inactive".to_string(),
            Ok(()) => "group is inactive".to_string(),
            Err(e) => format!("would refuse: {e}"),
        };
        println!("dry run ({note}); nothing changed:\n{plan}");
        return Ok(plan);
    }
    membership?;
    apply(kafka, &plan)?;
    println!("offsets reset:\n{plan}");
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_clamped_to_what_the_partition_holds() {
        assert_eq!(target_offset(ResetTo::Offset(5), 0, 10, None), 5);
        assert_eq!(target_offset(ResetTo::Offset(-3), 2, 10, None), 2);
        assert_eq!(target_offset(ResetTo::Offset(99), 0, 10, None), 10);
        assert_eq!(target_offset(ResetTo::Earliest, 3, 10, None), 3);
        assert_eq!(target_offset(ResetTo::Latest, 3, 10, None), 10);
        assert_eq!(target_offset(ResetTo::Timestamp(1), 0, 10, Some(4)), 4);
        assert_eq!(
            target_offset(ResetTo::Timestamp(1), 0, 10, None),
            10,
            "nothing that recent: the end"
        );
    }

    #[test]
    fn only_empty_groups_are_inactive() {
        assert!(group_is_inactive("Empty", 0));
        assert!(group_is_inactive("Dead", 0));
        assert!(
            !group_is_inactive("Stable", 0),
            "a stable group has members even if the broker lists none"
        );
        assert!(!group_is_inactive("PreparingRebalance", 0));
        assert!(!group_is_inactive("Empty", 1));
    }

    #[test]
    fn datetimes_parse_to_millis() {
        assert_eq!(parse_datetime("1970-01-01T00:00:01.5Z"), Ok(1500));
        assert_eq!(parse_datetime("2026-11-27T10:00:00+01:00"), Ok(1_795_770_000_000));
        assert!(parse_datetime("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn cli_requires_exactly_one_target() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            replay: ReplayArgs,
        }
        let ok = Cli::try_parse_from(["x", "--to-offset", "4", "--partition", "1", "--dry-run"]).unwrap();
        assert_eq!(ok.replay.target(), ResetTo::Offset(4));
        assert_eq!(ok.replay.partitions, vec![1]);
        assert!(Cli::try_parse_from(["x"]).is_err());
        assert!(Cli::try_parse_from(["x", "--to-earliest", "--to-latest"]).is_err());
        let t = Cli::try_parse_from(["x", "--to-datetime", "1970-01-01T00:00:02Z"]).unwrap();
        assert_eq!(t.replay.target(), ResetTo::Timestamp(2000));
    }
}
