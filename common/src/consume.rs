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
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
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
    /// Records queued for one partition before it is paused. A pause makes librdkafka drop what it
    /// had prefetched for the partition, so this is well above what one fetch answer brings.
    pub max_queued_per_partition: usize,
    /// How often finished offsets are stored for the background commit.
    pub store_interval: Duration,
    /// How long in-flight batches may run after shutdown begins before they are cancelled.
    pub shutdown_grace: Duration,
    /// How long leaving the group may take at the end of shutdown.
    pub close_timeout: Duration,
    /// Where the loop counts its assignment, pauses and rebalances (register them to export).
    pub metrics: LoopMetrics,
}

impl Default for LoopSettings {
    fn default() -> Self {
        LoopSettings {
            max_batch: 100,
            max_queued_per_partition: 5000,
            store_interval: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            metrics: LoopMetrics::default(),
        }
    }
}

/// The loop's tuning as a stage's `consumer` configuration section, with documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Most records of one partition handled together. Default 100.
    pub max_batch: usize,
    /// Records queued for one partition before it is paused. Default 5000.
    pub max_queued_per_partition: usize,
    /// How often finished offsets are handed to the background commit (which runs every second;
    /// `kafka.properties.auto.commit.interval.ms` changes that). When nothing is in flight, they
    /// are committed at once. Default `200ms`.
    pub store_interval: HumanDuration,
    /// On shutdown, how long batches in hand may run before they are abandoned (and redelivered to
    /// the next owner). Default `10s`.
    pub shutdown_grace: HumanDuration,
    /// How often consumer lag is measured for `/metrics`. Default `10s`.
    pub lag_interval: HumanDuration,
    /// How long a stage may fail to make progress before `/readyz` turns red and names why: no
    /// partition assigned, a partition with records in hand finishing none, or a step (producing,
    /// the registry, Dataverse) failing throughout. Default `60s`.
    pub stall_after: HumanDuration,
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
            stall_after: HumanDuration::secs(60),
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
        if self.stall_after.0 < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                format!("{section}.stall_after"),
                "must be at least 1s",
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

/// State the rebalance callback, the loop and the partition workers share, behind one lock that
/// is held only for bookkeeping and local client calls (pause, resume), never across an await.
/// One lock, so an epoch check and the offsets it guards, or a pause flag and the pause itself,
/// can never be interleaved by another thread.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    tracker: OffsetTracker,
    partitions: HashMap<(String, i32), PartitionState>,
    /// When this member last held no partition (since subscribing, or since its last revoke of
    /// everything); `None` while it owns some.
    unassigned_since: Option<Instant>,
}

struct PartitionState {
    /// Bumped on every revoke, so work of an earlier assignment cannot mark offsets finished.
    epoch: u64,
    assigned: bool,
    /// Cancels the partition's in-flight work when it is revoked.
    token: Option<CancellationToken>,
    /// Whether this loop paused the partition (flow control).
    paused: bool,
    /// When the partition last made progress (a batch finished) or became busy; for the
    /// stall check.
    progress_at: Instant,
}

impl Default for PartitionState {
    fn default() -> Self {
        PartitionState {
            epoch: 0,
            assigned: false,
            token: None,
            paused: false,
            progress_at: Instant::now(),
        }
    }
}

impl State {
    fn partition(&mut self, topic: &str, partition: i32) -> &mut PartitionState {
        self.partitions.entry((topic.to_string(), partition)).or_default()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain bookkeeping behind; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The loop's metrics, registered by the stage under its own prefix
/// (`<stage>_assigned_partitions`, `<stage>_consumer_rebalances_total`,
/// `<stage>_consumer_lag{topic,partition}`, `<stage>_paused_partitions`).
#[derive(Debug, Clone, Default)]
pub struct LoopMetrics {
    /// Partitions of the input topics this member owns.
    pub assigned_partitions: Gauge,
    /// Partitions paused for flow control right now.
    pub paused_partitions: Gauge,
    /// Rebalance events this member took part in, by kind (`assign`, `revoke`, `error`).
    pub rebalances: Family<KindLabel, Counter>,
    /// Records not yet committed by the group, per owned partition (see [`crate::lag`]).
    pub consumer_lag: Family<PartitionLabel, Gauge>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub topic: String,
    pub partition: String,
}

impl LoopMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "assigned_partitions",
            "Input partitions this instance owns",
            self.assigned_partitions.clone(),
        );
        registry.register(
            "paused_partitions",
            "Owned partitions paused because their queue of records in hand is full",
            self.paused_partitions.clone(),
        );
        registry.register(
            "consumer_rebalances",
            "Rebalance events of this instance, by kind (assign, revoke, error)",
            self.rebalances.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records not yet committed by the group, per owned partition",
            self.consumer_lag.clone(),
        );
    }

    fn rebalance(&self, kind: &'static str) {
        self.rebalances.get_or_create(&KindLabel { kind }).inc();
    }
}

/// The consumer context: commits finished work on revoke, keeps the pause flags true across
/// reassignment, and counts the assignment.
pub struct LoopContext {
    shared: Arc<Shared>,
    group: String,
    metrics: LoopMetrics,
}

impl ClientContext for LoopContext {}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                self.metrics.rebalance("revoke");
                let mut store = TopicPartitionList::new();
                {
                    let mut state = self.shared.lock();
                    for elem in tpl.elements() {
                        let (topic, partition) = (elem.topic(), elem.partition());
                        if let Some(offset) = state.tracker.committable(topic, partition) {
                            let _ = store.add_partition_offset(topic, partition, Offset::Offset(offset));
                        }
                        state.tracker.revoke(topic, partition);
                        let p = state.partition(topic, partition);
                        p.epoch += 1;
                        p.assigned = false;
                        if let Some(token) = p.token.take() {
                            token.cancel();
                        }
                        p.paused = false;
                    }
                    // librdkafka keeps an application pause across reassignment: a partition
                    // paused here and assigned back later would never deliver again.
                    if let Err(e) = consumer.resume(tpl) {
                        tracing::debug!(group = %self.group, error = %e, "resuming revoked partitions failed");
                    }
                    self.update_gauges(&mut state);
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
            Rebalance::Error(e) => {
                self.metrics.rebalance("error");
                tracing::error!(group = %self.group, error = %e, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.metrics.rebalance("assign");
            let mut state = self.shared.lock();
            for elem in tpl.elements() {
                let p = state.partition(elem.topic(), elem.partition());
                p.assigned = true;
                p.paused = false;
                p.progress_at = Instant::now();
            }
            // A partition this member paused in an earlier assignment comes back paused.
            if let Err(e) = consumer.resume(tpl) {
                tracing::debug!(group = %self.group, error = %e, "resuming assigned partitions failed");
            }
            self.update_gauges(&mut state);
        }
    }
}

impl LoopContext {
    fn update_gauges(&self, state: &mut State) {
        let assigned = state.partitions.values().filter(|p| p.assigned).count();
        let paused = state
            .partitions
            .values()
            .filter(|p| p.assigned && p.paused)
            .count();
        self.metrics.assigned_partitions.set(assigned as i64);
        self.metrics.paused_partitions.set(paused as i64);
        match (assigned, state.unassigned_since) {
            (0, None) => state.unassigned_since = Some(Instant::now()),
            (n, Some(_)) if n > 0 => state.unassigned_since = None,
            _ => {}
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect()
}

/// What the loop knows of its own progress, for readiness and the lag sampler. Cheap to clone.
#[derive(Clone)]
pub struct LoopStatus {
    shared: Arc<Shared>,
    group: String,
}

impl std::fmt::Debug for LoopStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopStatus")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl LoopStatus {
    /// The partitions this member owns now.
    pub fn assigned(&self) -> Vec<(String, i32)> {
        let mut out: Vec<(String, i32)> = self
            .shared
            .lock()
            .partitions
            .iter()
            .filter(|(_, p)| p.assigned)
            .map(|(k, _)| k.clone())
            .collect();
        out.sort();
        out
    }

    /// `Err` naming why the loop cannot make progress: it has owned no partition for
    /// `stall_after`, or a partition has records in hand and finished none for `stall_after`.
    pub fn verdict(&self, stall_after: Duration) -> Result<(), String> {
        let state = self.shared.lock();
        let now = Instant::now();
        let mut problems = Vec::new();
        if let Some(since) = state.unassigned_since
            && now.duration_since(since) >= stall_after
        {
            problems.push(format!(
                "no partition assigned to this member of group {} for {}s",
                self.group,
                now.duration_since(since).as_secs()
            ));
        }
        let mut stalled: Vec<String> = state
            .partitions
            .iter()
            .filter(|((topic, partition), p)| {
                p.assigned
                    && state.tracker.in_flight_in(topic, *partition) > 0
                    && now.duration_since(p.progress_at) >= stall_after
            })
            .map(|((topic, partition), p)| {
                format!(
                    "{topic}[{partition}]: no record finished for {}s",
                    now.duration_since(p.progress_at).as_secs()
                )
            })
            .collect();
        stalled.sort();
        problems.extend(stalled);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
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
        lock(&shared.state).unassigned_since = Some(Instant::now());
        let context = LoopContext {
            shared: shared.clone(),
            group: group.to_string(),
            metrics: settings.metrics.clone(),
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

    /// The loop's view of its own progress, for `/readyz` and lag measurement.
    pub fn status(&self) -> LoopStatus {
        LoopStatus {
            shared: self.shared.clone(),
            group: self.group.clone(),
        }
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
                    let epoch = {
                        let mut state = shared.lock();
                        let idle = state.tracker.in_flight_in(&record.topic, record.partition) == 0;
                        state.tracker.start(&record.topic, record.partition, record.offset);
                        let p = state.partition(&record.topic, record.partition);
                        if idle {
                            p.progress_at = Instant::now();
                        }
                        p.epoch
                    };
                    let stale = workers.get(&key).is_none_or(|w| w.epoch != epoch || w.tx.is_closed());
                    if stale {
                        let token = hard_stop.child_token();
                        shared.lock().partition(&record.topic, record.partition).token = Some(token.clone());
                        let (tx, rx) = mpsc::unbounded_channel();
                        let worker = Worker { tx, epoch, queued: Arc::new(AtomicUsize::new(0)) };
                        tasks.spawn(partition_worker(PartitionWork {
                            topic: record.topic.clone(),
                            partition: record.partition,
                            epoch,
                            rx,
                            queued: worker.queued.clone(),
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
                    worker.queued.fetch_add(1, Ordering::SeqCst);
                    let (topic, partition) = (record.topic.clone(), record.partition);
                    if worker.tx.send(record).is_err() {
                        tracing::debug!(topic, partition, "worker of a revoked partition is gone");
                        continue;
                    }
                    flow_control(&consumer, &shared, &settings, &topic, partition, epoch, &worker.queued);
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
        let in_flight = shared.lock().tracker.in_flight();
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

/// Pauses a partition whose queue of records in hand reached `max_queued_per_partition` and
/// resumes it once the queue is down to half. The decision and the client call happen under the
/// shared lock, reading the queue length there, so a pause and a resume racing from the loop
/// and the worker can never leave a partition paused with nothing queued to resume it.
fn flow_control(
    consumer: &StreamConsumer<LoopContext>,
    shared: &Shared,
    settings: &LoopSettings,
    topic: &str,
    partition: i32,
    epoch: u64,
    queued: &AtomicUsize,
) {
    let mut state = shared.lock();
    let p = state.partition(topic, partition);
    if p.epoch != epoch || !p.assigned {
        return;
    }
    let queued = queued.load(Ordering::SeqCst);
    let pause = if !p.paused && queued >= settings.max_queued_per_partition {
        true
    } else if p.paused && queued <= settings.max_queued_per_partition / 2 {
        false
    } else {
        return;
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let result = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    match result {
        Ok(()) => {
            p.paused = pause;
            let paused = state
                .partitions
                .values()
                .filter(|p| p.assigned && p.paused)
                .count();
            settings.metrics.paused_partitions.set(paused as i64);
            tracing::debug!(topic, partition, pause, queued, "partition flow control");
        }
        Err(e) => tracing::warn!(topic, partition, pause, error = %e, "pause/resume failed"),
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
}

struct PartitionWork<H> {
    topic: String,
    partition: i32,
    epoch: u64,
    rx: mpsc::UnboundedReceiver<Record>,
    queued: Arc<AtomicUsize>,
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
        w.queued.fetch_sub(n, Ordering::SeqCst);
        match outcome {
            Ok(()) => {
                // The epoch is checked under the same lock as the offsets are finished, so a
                // revoke (and a new assignment's records) can never slip in between.
                let mut state = w.shared.lock();
                let State {
                    tracker, partitions, ..
                } = &mut *state;
                if let Some(p) = partitions.get_mut(&(w.topic.clone(), w.partition))
                    && p.epoch == w.epoch
                {
                    for o in offsets {
                        tracker.finish(&w.topic, w.partition, o);
                    }
                    p.progress_at = Instant::now();
                }
            }
            Err(Abandoned) => {
                tracing::info!(topic = %w.topic, partition = w.partition, records = n, "batch abandoned; it will be redelivered");
                return;
            }
        }
        flow_control(
            &w.consumer,
            &w.shared,
            &w.settings,
            &w.topic,
            w.partition,
            w.epoch,
            &w.queued,
        );
    }
}

/// Stores every committable offset that changed, for the background commit to pick up. When
/// nothing is in flight any more (a backlog drained, a burst handled), the stored offsets are
/// committed at once rather than at the next background commit, so a caught-up group shows no
/// lag and a restart re-reads nothing.
fn store_finished(consumer: &StreamConsumer<LoopContext>, shared: &Shared) {
    let (changes, idle) = {
        let mut state = shared.lock();
        (state.tracker.take_committable(), state.tracker.in_flight() == 0)
    };
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
        return;
    }
    if idle && let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
        tracing::debug!(error = %e, "committing on idle failed; the background commit follows");
    }
}
