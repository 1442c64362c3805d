//! The commit-after-success consumer loop every consuming stage runs.
//!
//! Records are handed to a [`BatchHandler`] in offset order per partition, with partitions
//! processed concurrently. An offset is stored (and so committed by librdkafka's background
//! commit, on revoke and on close) only when every record before it in its partition is finished.
//! The poll loop never waits for processing: a partition whose queue grows past a bound is paused
//! and resumed when it drains, so a long outage downstream never drops the consumer from its
//! group (`max.poll.interval.ms`). On revoke, what is finished is committed synchronously and the
//! partition's in-flight work is cancelled; on shutdown, in-flight batches get a grace period and
//! exactly what is finished is committed.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use rdkafka::{
    ClientContext, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::KafkaError,
    message::{BorrowedMessage, OwnedHeaders},
};
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;

use serde::{Deserialize, Serialize};

use crate::{
    config::{ConfigError, HumanDuration, KafkaSettings},
    offsets::OffsetTracker,
};

/// One consumed record, owned so it can outlive the poll that delivered it.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
    /// Broker or producer timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    fn from_message(m: &BorrowedMessage<'_>) -> Self {
        Record {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: m.headers().map(rdkafka::message::BorrowedHeaders::detach),
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    /// The key as UTF-8, if it is.
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref().and_then(|k| std::str::from_utf8(k).ok())
    }
}

/// The handler gave up on a batch because it was cancelled (shutdown deadline, partition
/// revoked). None of the batch counts as finished, so it will be delivered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("processing abandoned before it finished")]
pub struct Abandoned;

/// A stage's processing. Called with records of one partition, in offset order; each call must
/// return only when every record of the batch is finished — written downstream, or written to the
/// dead-letter topic with its reason. Transient failures are retried inside, never skipped; when
/// `cancel` fires, return `Err(Abandoned)` promptly.
pub trait BatchHandler: Send + Sync + 'static {
    fn handle(
        &self,
        batch: Vec<Record>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), Abandoned>> + Send;
}

/// Tuning of the loop; the defaults suit both stages.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// Most records handed to one `handle` call.
    pub max_batch: usize,
    /// Records queued for one partition before it is paused.
    pub max_queued_per_partition: usize,
    /// How often finished offsets are stored for the background commit.
    pub store_interval: Duration,
    /// How long in-flight batches may run after shutdown begins before they are cancelled.
    pub shutdown_grace: Duration,
    /// How long leaving the group may take at the end of shutdown.
    pub close_timeout: Duration,
}

impl Default for LoopSettings {
    fn default() -> Self {
        LoopSettings {
            max_batch: 100,
            max_queued_per_partition: 1000,
            store_interval: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// The loop's tuning as a stage's `consumer` configuration section, with documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Most records of one partition handled together. Default 100.
    pub max_batch: usize,
    /// Records queued for one partition before it is paused. Default 1000.
    pub max_queued_per_partition: usize,
    /// How often finished offsets are handed to the background commit (which runs every second;
    /// `kafka.properties.auto.commit.interval.ms` changes that). Default `200ms`.
    pub store_interval: HumanDuration,
    /// On shutdown, how long batches in hand may run before they are abandoned (and redelivered to
    /// the next owner). Default `10s`.
    pub shutdown_grace: HumanDuration,
    /// How often consumer lag is measured for `/metrics`. Default `10s`.
    pub lag_interval: HumanDuration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        let d = LoopSettings::default();
        ConsumerSettings {
            max_batch: d.max_batch,
            max_queued_per_partition: d.max_queued_per_partition,
            store_interval: HumanDuration(d.store_interval),
            shutdown_grace: HumanDuration(d.shutdown_grace),
            lag_interval: HumanDuration::secs(10),
        }
    }
}

impl ConsumerSettings {
    pub fn loop_settings(&self) -> LoopSettings {
        LoopSettings {
            max_batch: self.max_batch,
            max_queued_per_partition: self.max_queued_per_partition,
            store_interval: self.store_interval.into(),
            shutdown_grace: self.shutdown_grace.into(),
            ..LoopSettings::default()
        }
    }

    /// Rejects settings that parse but cannot work; `section` names them in the error.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.max_batch == 0 {
            return Err(ConfigError::invalid(
                format!("{section}.max_batch"),
                "must be at least 1",
            ));
        }
        if self.max_queued_per_partition < self.max_batch {
            return Err(ConfigError::invalid(
                format!("{section}.max_queued_per_partition"),
                format!("must be at least {section}.max_batch"),
            ));
        }
        if self.store_interval.0.is_zero() {
            return Err(ConfigError::invalid(
                format!("{section}.store_interval"),
                "must be above zero",
            ));
        }
        if self.lag_interval.0 < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                format!("{section}.lag_interval"),
                "must be at least 100ms",
            ));
        }
        Ok(())
    }
}

/// State the rebalance callback and the loop share. Locks are held only for bookkeeping, never
/// across an await.
#[derive(Default)]
struct Shared {
    tracker: Mutex<OffsetTracker>,
    /// Cancels a partition's in-flight work when the partition is revoked.
    partition_tokens: Mutex<HashMap<(String, i32), CancellationToken>>,
    /// Bumped on every revoke, so work of an earlier assignment cannot mark offsets finished.
    epochs: Mutex<HashMap<(String, i32), u64>>,
}

impl Shared {
    fn epoch(&self, topic: &str, partition: i32) -> u64 {
        lock(&self.epochs)
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(0)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain bookkeeping behind; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The consumer context: commits finished work on revoke.
pub struct LoopContext {
    shared: Arc<Shared>,
    group: String,
}

impl ClientContext for LoopContext {}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let mut store = TopicPartitionList::new();
                {
                    let mut tracker = lock(&self.shared.tracker);
                    let mut epochs = lock(&self.shared.epochs);
                    let mut tokens = lock(&self.shared.partition_tokens);
                    for elem in tpl.elements() {
                        let (topic, partition) = (elem.topic(), elem.partition());
                        if let Some(offset) = tracker.committable(topic, partition) {
                            let _ = store.add_partition_offset(topic, partition, Offset::Offset(offset));
                        }
                        tracker.revoke(topic, partition);
                        *epochs.entry((topic.to_string(), partition)).or_default() += 1;
                        if let Some(token) = tokens.remove(&(topic.to_string(), partition)) {
                            token.cancel();
                        }
                    }
                }
                if store.count() > 0 {
                    if let Err(e) = consumer.store_offsets(&store) {
                        tracing::warn!(group = %self.group, error = %e, "storing offsets on revoke failed");
                    }
                    if let Err(e) = consumer.commit(&store, CommitMode::Sync) {
                        tracing::warn!(group = %self.group, error = %e, "committing on revoke failed; the new owner re-reads from the last commit");
                    }
                }
                tracing::info!(group = %self.group, partitions = ?partitions(tpl), "partitions revoked");
            }
            Rebalance::Assign(tpl) => {
                tracing::info!(group = %self.group, partitions = ?partitions(tpl), "partitions assigned");
            }
            Rebalance::Error(e) => tracing::error!(group = %self.group, error = %e, "rebalance error"),
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect()
}

/// A consumer-group member running the commit-after-success loop.
pub struct ConsumerLoop {
    consumer: Arc<StreamConsumer<LoopContext>>,
    shared: Arc<Shared>,
    settings: LoopSettings,
    group: String,
}

impl ConsumerLoop {
    /// Joins `group` and subscribes to `topics`. Blocks briefly while the client is created.
    pub fn new(
        kafka: &KafkaSettings,
        client_id: &str,
        group: &str,
        topics: &[&str],
        settings: LoopSettings,
    ) -> Result<Self, KafkaError> {
        let shared = Arc::new(Shared::default());
        let context = LoopContext {
            shared: shared.clone(),
            group: group.to_string(),
        };
        let consumer: StreamConsumer<LoopContext> = crate::kafka::consumer(kafka, client_id, group, context)?;
        consumer.subscribe(topics)?;
        Ok(ConsumerLoop {
            consumer: Arc::new(consumer),
            shared,
            settings,
            group: group.to_string(),
        })
    }

    /// The underlying consumer, for lag metrics (positions, watermarks).
    pub fn consumer(&self) -> Arc<StreamConsumer<LoopContext>> {
        self.consumer.clone()
    }

    /// Runs until `shutdown` is cancelled, then finishes or abandons in-flight work within the
    /// grace period, commits exactly what is finished, and leaves the group.
    pub async fn run<H: BatchHandler>(
        self,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) -> Result<(), KafkaError> {
        let ConsumerLoop {
            consumer,
            shared,
            settings,
            group,
        } = self;
        let hard_stop = CancellationToken::new();
        let mut workers: HashMap<(String, i32), Worker> = HashMap::new();
        let mut tasks = JoinSet::new();
        let mut store_tick = tokio::time::interval(settings.store_interval);
        store_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let result = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                _ = store_tick.tick() => store_finished(&consumer, &shared),
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done && e.is_panic() {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
                message = consumer.recv() => {
                    let message = match message {
                        Ok(m) => m,
                        Err(e) => {
                            // Transport errors are reported here and recovered by librdkafka.
                            tracing::warn!(group = %group, error = %e, "consumer error");
                            continue;
                        }
                    };
                    let record = Record::from_message(&message);
                    drop(message);
                    let key = (record.topic.clone(), record.partition);
                    let epoch = shared.epoch(&record.topic, record.partition);
                    let stale = workers.get(&key).is_none_or(|w| w.epoch != epoch || w.tx.is_closed());
                    if stale {
                        let token = hard_stop.child_token();
                        lock(&shared.partition_tokens).insert(key.clone(), token.clone());
                        let (tx, rx) = mpsc::unbounded_channel();
                        let worker = Worker { tx, epoch, queued: Arc::new(AtomicUsize::new(0)), paused: Arc::new(AtomicBool::new(false)) };
                        tasks.spawn(partition_worker(PartitionWork {
                            topic: record.topic.clone(),
                            partition: record.partition,
                            epoch,
                            rx,
                            queued: worker.queued.clone(),
                            paused: worker.paused.clone(),
                            token,
                            stopping: shutdown.clone(),
                            handler: handler.clone(),
                            shared: shared.clone(),
                            consumer: consumer.clone(),
                            settings: settings.clone(),
                        }));
                        workers.insert(key.clone(), worker);
                    }
                    let Some(worker) = workers.get(&key) else { continue };
                    lock(&shared.tracker).start(&record.topic, record.partition, record.offset);
                    let queued = worker.queued.fetch_add(1, Ordering::SeqCst) + 1;
                    let (topic, partition) = (record.topic.clone(), record.partition);
                    if worker.tx.send(record).is_err() {
                        tracing::debug!(topic, partition, "worker of a revoked partition is gone");
                        continue;
                    }
                    if queued >= settings.max_queued_per_partition && !worker.paused.swap(true, Ordering::SeqCst) {
                        set_paused(&consumer, &topic, partition, true);
                    }
                }
            }
        };

        // Shutdown: stop feeding workers; each finishes the batch in hand and stops.
        drop(workers);
        let grace = tokio::time::sleep(settings.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = tasks.join_next() => if next.is_none() { break },
                () = &mut grace => {
                    tracing::warn!(group = %group, "shutdown grace period over; abandoning in-flight work");
                    hard_stop.cancel();
                    while tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        store_finished(&consumer, &shared);
        let in_flight = lock(&shared.tracker).in_flight();
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::error::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(group = %group, error = %e, "final commit failed; the next owner re-reads from the last commit")
            }
        }
        consumer.unsubscribe();
        tracing::info!(group = %group, unfinished = in_flight, "consumer stopped");
        leave_group(consumer, &group, settings.close_timeout).await;
        result
    }
}

/// Closes the consumer (leaving the group) on a plain thread, waiting at most `timeout`.
/// librdkafka's close blocks until the group coordinator answers, which never happens while the
/// broker is down; what had to be committed is committed already, so a stage must not hang here.
async fn leave_group(consumer: Arc<StreamConsumer<LoopContext>>, group: &str, timeout: Duration) {
    let closer = std::thread::spawn(move || drop(consumer));
    let deadline = tokio::time::Instant::now() + timeout;
    while !closer.is_finished() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                group,
                ?timeout,
                "leaving the consumer group did not finish in time; the broker expires the membership"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Worker {
    tx: mpsc::UnboundedSender<Record>,
    epoch: u64,
    queued: Arc<AtomicUsize>,
    paused: Arc<AtomicBool>,
}

struct PartitionWork<H> {
    topic: String,
    partition: i32,
    epoch: u64,
    rx: mpsc::UnboundedReceiver<Record>,
    queued: Arc<AtomicUsize>,
    paused: Arc<AtomicBool>,
    /// Cancelled on revoke or when the shutdown grace period is over.
    token: CancellationToken,
    /// Shutdown has begun: finish the batch in hand, take no more.
    stopping: CancellationToken,
    handler: Arc<H>,
    shared: Arc<Shared>,
    consumer: Arc<StreamConsumer<LoopContext>>,
    settings: LoopSettings,
}

async fn partition_worker<H: BatchHandler>(mut w: PartitionWork<H>) {
    loop {
        if w.token.is_cancelled() || w.stopping.is_cancelled() {
            return;
        }
        let first = tokio::select! {
            r = w.rx.recv() => match r { Some(r) => r, None => return },
            () = w.token.cancelled() => return,
            () = w.stopping.cancelled() => return,
        };
        let mut batch = vec![first];
        while batch.len() < w.settings.max_batch {
            match w.rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let offsets: Vec<i64> = batch.iter().map(|r| r.offset).collect();
        let n = batch.len();
        let outcome = w.handler.handle(batch, &w.token).await;
        let remaining = w.queued.fetch_sub(n, Ordering::SeqCst) - n;
        match outcome {
            Ok(()) => {
                if w.shared.epoch(&w.topic, w.partition) == w.epoch {
                    let mut tracker = lock(&w.shared.tracker);
                    for o in offsets {
                        tracker.finish(&w.topic, w.partition, o);
                    }
                }
            }
            Err(Abandoned) => {
                tracing::info!(topic = %w.topic, partition = w.partition, records = n, "batch abandoned; it will be redelivered");
                return;
            }
        }
        if remaining <= w.settings.max_queued_per_partition / 2 && w.paused.swap(false, Ordering::SeqCst) {
            set_paused(&w.consumer, &w.topic, w.partition, false);
        }
    }
}

fn set_paused(consumer: &StreamConsumer<LoopContext>, topic: &str, partition: i32, pause: bool) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let result = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    match result {
        Ok(()) => tracing::debug!(topic, partition, pause, "partition flow control"),
        Err(e) => tracing::warn!(topic, partition, pause, error = %e, "pause/resume failed"),
    }
}

/// Stores every committable offset that changed, for the background commit to pick up.
fn store_finished(consumer: &StreamConsumer<LoopContext>, shared: &Shared) {
    let changes = lock(&shared.tracker).take_committable();
    if changes.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in &changes {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        // Happens when a partition was revoked between the snapshot and the store.
        tracing::debug!(error = %e, "storing offsets failed");
    }
}
