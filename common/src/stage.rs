//! What every consuming stage shares above the consumer loop: the command line (`run`, the
//! default, `print-config` and `replay`) and the runner ([`run_consuming`]) that wires a stage
//! the same way every time — ops endpoints first, then the producer, topics, the stage's own
//! start-up, the consumer loop with its lag sampler, and an orderly shutdown — so a stage's
//! `run` only builds its handler and hands it over.

use std::{
    future::Future,
    net::SocketAddr,
    process::ExitCode,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{self, ConfigArgs, KafkaSettings, Settings},
    consume::{BatchHandler, ConsumerLoop, ConsumerSettings, LoopMetrics, LoopStatus},
    dlq::DeadLetters,
    health::Health,
    kafka::{TopicError, TopicSettings},
    ops::{self, Check},
    producer::Producer,
    replay::{self, ReplayArgs},
    retry::{self, BackoffSettings, Retry, Stopped, Verdict},
    telemetry::TelemetrySettings,
};

/// What the shared command line and runner need to know of a consuming stage's settings.
pub trait ConsumingStage: Settings + Send + 'static {
    /// The binary's name: help, messages, the Kafka client id, the `dlq.stage` header and the
    /// default service name in traces.
    const NAME: &'static str;
    fn listen(&self) -> SocketAddr;
    fn kafka(&self) -> &KafkaSettings;
    fn telemetry(&self) -> &TelemetrySettings;
    fn group(&self) -> &str;
    fn input_topic(&self) -> &str;
    /// Where the stage dead-letters its input (`dlq` commands read it): `<input_topic>.dlq`
    /// unless the stage is configured otherwise.
    fn dlq_topic(&self) -> String {
        schemas::topics::dlq_for(self.input_topic())
    }
    /// The schema registry the stage reads with, so `dlq show` can decode dead letters.
    fn registry(&self) -> Option<&crate::config::RegistrySettings> {
        None
    }
    /// Kafka static membership (`group.instance.id`), if configured.
    fn instance_id(&self) -> Option<&str>;
    fn consumer(&self) -> &ConsumerSettings;
    fn backoff(&self) -> &BackoffSettings;
    fn topics(&self) -> &TopicSettings;
    /// The topics this stage creates at start-up when `topics.create` is on.
    fn topics_to_create(&self) -> Vec<String>;
    /// How long a produced record (output or dead letter) may wait for its acknowledgement.
    fn produce_timeout(&self) -> Duration;
}

/// Why a stage's own start-up did not produce a handler.
#[derive(Debug)]
pub enum StartError {
    /// Shutdown began first: not an error.
    Stopped,
    /// The configuration cannot work (a refused schema, a table that does not exist).
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Failed(e)
    }
}

/// A way for a stage's parts to end the stage when something it cannot recover from happens
/// (a dead request dispatcher, say): the loop stops as on shutdown, and [`run_consuming`]
/// returns the reason as its error, so the process exits non-zero and is restarted.
#[derive(Clone, Default)]
pub struct Fatal {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fatal")
            .field("failed", &self.token.is_cancelled())
            .finish()
    }
}

impl Fatal {
    /// Ends the stage with `reason` (the first reason wins).
    pub fn fail(&self, reason: impl Into<String>) {
        let mut slot = self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(reason.into());
        }
        self.token.cancel();
    }

    /// The reason, once failed.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// What a stage's start-up receives from the runner to build its handler.
#[derive(Clone)]
pub struct Startup {
    /// The stage's producer (output records and dead letters), self-replacing when it breaks.
    pub producer: Producer,
    /// Dead letters through that producer, with the stage's name and backoff.
    pub dead_letters: DeadLetters,
    /// Where retries report lasting failures, so `/readyz` can say why the stage is stuck.
    pub health: Health,
    /// Cancelled when the stage shuts down.
    pub shutdown: CancellationToken,
    /// Ends the stage with an error from anywhere in it.
    pub fatal: Fatal,
    backoff: BackoffSettings,
}

impl std::fmt::Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Startup").finish_non_exhaustive()
    }
}

impl Startup {
    /// The stage's backoff settings.
    pub fn backoff(&self) -> &BackoffSettings {
        &self.backoff
    }

    /// Runs a start-up step until it succeeds, retrying what `op` classifies as transient with
    /// the stage's backoff; a permanent failure fails start-up, shutdown ends it.
    pub async fn retry<T, E, F, Fut>(&self, what: &str, op: F) -> Result<T, StartError>
    where
        E: std::fmt::Display,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, Verdict<E>>>,
    {
        let retry = Retry {
            what,
            backoff: self.backoff.backoff(),
            cancel: &self.shutdown,
            health: Some(&self.health),
        };
        match retry::until_cancelled(retry, op).await {
            Ok(v) => Ok(v),
            Err(Stopped::Cancelled) => Err(StartError::Stopped),
            Err(Stopped::GaveUp { error, .. }) => Err(StartError::Failed(anyhow::anyhow!("{what}: {error}"))),
        }
    }
}

/// Runs a consuming stage until `shutdown` is cancelled (or a part of it reports a [`Fatal`]
/// error):
/// 1. serves `/healthz`, `/readyz` (the stage's `checks`, the broker, and the loop's progress)
///    and `/metrics` (`registry`, plus the loop's and the producer's metrics) on `ops_listener`;
/// 2. creates the stage's producer and calls `start`, the stage's own start-up, which checks
///    the stage's services and builds the handler (a refusal there fails start-up at once);
/// 3. creates the stage's topics when `topics.create` is on, retrying an unreachable broker;
/// 4. joins the consumer group (static membership when `instance_id` is set) and runs the loop,
///    with consumer lag measured every `consumer.lag_interval`;
/// 5. on shutdown, finishes or abandons in-flight work within `consumer.shutdown_grace`, commits
///    exactly what is finished, leaves the group and stops the ops server.
pub async fn run_consuming<S, H, F, Fut>(
    settings: &S,
    mut registry: Registry,
    checks: Vec<(&'static str, Check)>,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
    start: F,
) -> anyhow::Result<()>
where
    S: ConsumingStage,
    H: BatchHandler,
    F: FnOnce(Startup) -> Fut,
    Fut: Future<Output = Result<H, StartError>>,
{
    let health = Health::new();
    let stall_after: Duration = settings.consumer().stall_after.into();
    let producer = Producer::connect(
        settings.kafka(),
        S::NAME,
        settings.produce_timeout(),
        health.clone(),
    )
    .await
    .context("setting `kafka`: cannot create the Kafka producer")?;
    registry.register(
        "producer_resets",
        "Times the Kafka producer was replaced after a timeout or a refused producer state",
        producer.resets(),
    );
    let loop_metrics = LoopMetrics::default();
    loop_metrics.register(&mut registry);

    // Ops first, so /healthz answers and /readyz explains while dependencies are awaited.
    let status: Arc<OnceLock<LoopStatus>> = Arc::new(OnceLock::new());
    let mut all_checks = vec![("kafka", broker_check(settings.kafka()))];
    all_checks.extend(checks);
    all_checks.push((
        "progress",
        progress_check(status.clone(), health.clone(), stall_after),
    ));
    let ops_stop = CancellationToken::new();
    let ops_task = tokio::spawn(ops::serve(
        ops_listener,
        ops::router(Arc::new(registry), all_checks),
        ops_stop.clone(),
    ));

    let fatal = Fatal::default();
    let startup = Startup {
        dead_letters: DeadLetters::new(
            producer.clone(),
            S::NAME,
            settings.backoff().clone(),
            health.clone(),
        ),
        producer: producer.clone(),
        health: health.clone(),
        shutdown: shutdown.clone(),
        fatal: fatal.clone(),
        backoff: settings.backoff().clone(),
    };
    let result = async {
        // The stage's own checks come first: a configuration its services refuse fails start-up
        // even while the broker is still unreachable. Either wait ends on shutdown.
        let create = settings.topics().create;
        let topics_startup = startup.clone();
        let handler = tokio::select! {
            handler = start(startup) => handler?,
            () = shutdown.cancelled() => return Err(StartError::Stopped),
        };
        if create {
            tokio::select! {
                created = create_topics(settings, &topics_startup) => created?,
                () = shutdown.cancelled() => return Err(StartError::Stopped),
            }
        }
        run_loop(settings, handler, &status, &loop_metrics, &shutdown, &fatal)
            .await
            .map_err(StartError::Failed)
    }
    .await;

    ops_stop.cancel();
    match ops_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "ops server failed"),
        Err(e) => tracing::warn!(error = %e, "ops server task failed"),
    }
    match result {
        Ok(()) | Err(StartError::Stopped) => match fatal.reason() {
            Some(reason) => Err(anyhow::anyhow!(reason)),
            None => Ok(()),
        },
        Err(StartError::Failed(e)) => Err(e),
    }
}

async fn create_topics<S: ConsumingStage>(settings: &S, startup: &Startup) -> Result<(), StartError> {
    let specs: Vec<_> = settings
        .topics_to_create()
        .into_iter()
        .map(|t| settings.topics().spec(t))
        .collect();
    startup
        .retry("creating topics", |_| async {
            crate::kafka::ensure_topics(settings.kafka(), &specs, "topics")
                .await
                .map_err(|e| match e {
                    e @ TopicError::Refused(_) => Verdict::GiveUp(e),
                    e @ TopicError::Unavailable(_) => Verdict::Retry(e),
                })
        })
        .await
}

async fn run_loop<S: ConsumingStage, H: BatchHandler>(
    settings: &S,
    handler: H,
    status: &OnceLock<LoopStatus>,
    metrics: &LoopMetrics,
    shutdown: &CancellationToken,
    fatal: &Fatal,
) -> anyhow::Result<()> {
    let mut kafka = settings.kafka().clone();
    if let Some(id) = settings.instance_id() {
        let id = expand_instance_id(id.trim(), hostname)?;
        kafka.properties.insert("group.instance.id".into(), id);
    }
    let mut loop_settings = settings.consumer().loop_settings();
    loop_settings.metrics = metrics.clone();
    let (group, input) = (settings.group().to_string(), settings.input_topic().to_string());
    let consumer_loop = {
        let (kafka, group) = (kafka.clone(), group.clone());
        tokio::task::spawn_blocking(move || {
            ConsumerLoop::new(&kafka, S::NAME, &group, &[input.as_str()], loop_settings)
        })
        .await
        .context("creating the consumer")?
        .context("setting `kafka`: cannot create the consumer")?
    };
    let _ = status.set(consumer_loop.status());
    let lag_client = {
        let group = group.clone();
        tokio::task::spawn_blocking(move || crate::lag::client(&kafka, S::NAME, &group))
            .await
            .context("creating the lag client")?
            .context("setting `kafka`: cannot create the lag client")?
    };
    let lag_stop = CancellationToken::new();
    let lag_task = tokio::spawn(crate::lag::sample(
        lag_client,
        consumer_loop.status(),
        metrics.clone(),
        settings.consumer().lag_interval.into(),
        lag_stop.clone(),
    ));

    // The loop stops on shutdown, and also when a part of the stage failed for good.
    let stop = shutdown.child_token();
    let stopper = {
        let (stop, failed) = (stop.clone(), fatal.token.clone());
        tokio::spawn(async move {
            failed.cancelled().await;
            stop.cancel();
        })
    };
    tracing::info!(group = %group, topic = %settings.input_topic(), "{} consuming", S::NAME);
    let result = consumer_loop.run(Arc::new(handler), stop).await;
    stopper.abort();
    lag_stop.cancel();
    let _ = lag_task.await;
    result.context("consumer loop failed")?;
    tracing::info!("{} stopped", S::NAME);
    Ok(())
}

/// The placeholder in `instance_id` that stands for the machine's hostname, so replicas started
/// from one configuration (containers of a scaled service, pods) each get their own static
/// membership id, stable across restarts in place.
pub const HOSTNAME_PLACEHOLDER: &str = "{hostname}";

/// `instance_id` with every [`HOSTNAME_PLACEHOLDER`] replaced by `hostname()`; the hostname is
/// looked up only when the placeholder is there.
pub fn expand_instance_id(id: &str, hostname: impl FnOnce() -> Option<String>) -> anyhow::Result<String> {
    if !id.contains(HOSTNAME_PLACEHOLDER) {
        return Ok(id.to_string());
    }
    let host = hostname().ok_or_else(|| {
        anyhow::anyhow!(
            "invalid setting `instance_id`: `{id}` uses {HOSTNAME_PLACEHOLDER}, but the hostname cannot be read (neither /proc/sys/kernel/hostname nor HOSTNAME)"
        )
    })?;
    Ok(id.replace(HOSTNAME_PLACEHOLDER, &host))
}

/// The machine's hostname: `/proc/sys/kernel/hostname` (Linux, and a container's own name), else
/// the `HOSTNAME` variable; `None` when neither gives a non-empty name.
pub fn hostname() -> Option<String> {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    [from_kernel, std::env::var("HOSTNAME").ok()]
        .into_iter()
        .flatten()
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
}

/// `/readyz` `kafka`: the broker serves metadata.
fn broker_check(kafka: &KafkaSettings) -> Check {
    let kafka = kafka.clone();
    ops::check(move || {
        let kafka = kafka.clone();
        async move { crate::kafka::check_broker(&kafka, Duration::from_secs(2)).await }
    })
}

/// `/readyz` `progress`: the loop runs and makes progress, and no step has failed throughout
/// `stall_after`.
fn progress_check(status: Arc<OnceLock<LoopStatus>>, health: Health, stall_after: Duration) -> Check {
    ops::check(move || {
        let verdict = match status.get() {
            None => Err("starting up".to_string()),
            Some(status) => status.verdict(stall_after),
        };
        let problems = health.verdict(stall_after);
        async move {
            match (verdict, problems) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(a), Err(b)) => Err(format!("{a}; {b}")),
                (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            }
        }
    })
}

#[derive(Debug, Parser)]
struct StageCli<X: Subcommand> {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Option<StageCommand<X>>,
}

#[derive(Debug, Subcommand)]
enum StageCommand<X: Subcommand> {
    /// Consume and process until SIGINT or SIGTERM (the default).
    Run,
    /// Print the effective configuration as TOML, secrets masked, and exit.
    PrintConfig,
    /// Reset the group's committed offsets for a topic (default: the input topic), so records
    /// are delivered again (or skipped). Stop every member of the group first.
    Replay(ReplayArgs),
    /// Inspect the stage's dead letters and send them back to the topic they came from.
    Dlq(crate::dlq_admin::DlqArgs),
    /// The stage's own commands (see [`main_with`]).
    #[command(flatten)]
    Extra(X),
}

/// The extra commands of a stage that has none.
#[derive(Debug, Clone, Copy)]
pub enum NoCommands {}

impl FromArgMatches for NoCommands {
    fn from_arg_matches(_: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Err(clap::Error::new(clap::error::ErrorKind::InvalidSubcommand))
    }

    fn update_from_arg_matches(&mut self, _: &clap::ArgMatches) -> Result<(), clap::Error> {
        match *self {}
    }
}

impl Subcommand for NoCommands {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        cmd
    }

    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        cmd
    }

    fn has_subcommand(_: &str) -> bool {
        false
    }
}

/// Parses the command line and runs the chosen command; `run` is the stage's library entry point.
/// `about` is the first line of `--help`.
pub async fn main<S, F, Fut>(about: &'static str, run: F) -> ExitCode
where
    S: ConsumingStage,
    F: FnOnce(S, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    main_with::<S, NoCommands, _, _, _, _>(about, run, |_, command| async move { match command {} }).await
}

/// [`main`] for a stage with commands of its own: `X`'s subcommands sit beside `run`,
/// `print-config` and `replay`, and `extra` runs them with the loaded settings (telemetry set
/// up), its exit code becoming the process's.
pub async fn main_with<S, X, F, Fut, G, GFut>(about: &'static str, run: F, extra: G) -> ExitCode
where
    S: ConsumingStage,
    X: Subcommand,
    F: FnOnce(S, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
    G: FnOnce(S, X) -> GFut,
    GFut: Future<Output = anyhow::Result<ExitCode>>,
{
    let command = StageCli::<X>::command()
        .name(S::NAME)
        .about(about)
        .long_about(format!(
            "{about}\n\nSettings come from defaults, a TOML file (--config), the environment \
             (KAFKA_BOOTSTRAP_SERVERS, SCHEMA_REGISTRY_URL, {}*) and --set key=value; see print-config.",
            S::ENV_PREFIX
        ))
        .version(env!("CARGO_PKG_VERSION"));
    let cli = match StageCli::<X>::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match dispatch::<S, X, F, Fut, G, GFut>(cli, run, extra).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{} failed", S::NAME);
            eprintln!("{}: {e:#}", S::NAME);
            ExitCode::FAILURE
        }
    }
}

async fn dispatch<S, X, F, Fut, G, GFut>(cli: StageCli<X>, run: F, extra: G) -> anyhow::Result<ExitCode>
where
    S: ConsumingStage,
    X: Subcommand,
    F: FnOnce(S, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
    G: FnOnce(S, X) -> GFut,
    GFut: Future<Output = anyhow::Result<ExitCode>>,
{
    let settings: S = config::load(&cli.config)?;
    match cli.command.unwrap_or(StageCommand::Run) {
        StageCommand::Extra(command) => {
            let telemetry = crate::telemetry::init(S::NAME, settings.telemetry())?;
            let code = extra(settings, command).await;
            telemetry.shutdown();
            code
        }
        StageCommand::PrintConfig => {
            print!("{}", config::render(&settings));
            Ok(ExitCode::SUCCESS)
        }
        StageCommand::Replay(args) => {
            let _telemetry = crate::telemetry::init(S::NAME, settings.telemetry())?;
            tokio::task::spawn_blocking(move || {
                replay::run(settings.kafka(), settings.group(), settings.input_topic(), &args)
            })
            .await
            .context("replay task failed")?
            .context("replay")?;
            Ok(ExitCode::SUCCESS)
        }
        StageCommand::Dlq(args) => {
            crate::dlq_admin::run(&settings, args).await?;
            Ok(ExitCode::SUCCESS)
        }
        StageCommand::Run => {
            let telemetry = crate::telemetry::init(S::NAME, settings.telemetry())?;
            let addr = settings.listen();
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("invalid setting `listen`: cannot listen on {addr}"))?;
            // One line on stdout, for people and for harnesses that wait for it.
            println!("{} ops listening on http://{}", S::NAME, listener.local_addr()?);
            let result = run(settings, listener, crate::shutdown::on_signal()).await;
            telemetry.shutdown();
            result.map(|()| ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn hostname_placeholder_is_replaced_by_the_hostname_wherever_it_appears() {
        let id = expand_instance_id("enricher-{hostname}", || Some("3f2a9c1d7b4e".into())).unwrap();
        assert_eq!(id, "enricher-3f2a9c1d7b4e");
        let id = expand_instance_id("{hostname}", || Some("sink-7".into())).unwrap();
        assert_eq!(id, "sink-7");
        let id = expand_instance_id("{hostname}/{hostname}", || Some("h".into())).unwrap();
        assert_eq!(id, "h/h");
    }

    #[test]
    fn an_instance_id_without_the_placeholder_is_kept_and_the_hostname_not_read() {
        let asked = Cell::new(false);
        let id = expand_instance_id("enricher-0", || {
            asked.set(true);
            Some("ignored".into())
        })
        .unwrap();
        assert_eq!(id, "enricher-0");
        assert!(!asked.get(), "the hostname was looked up without a placeholder");
    }

    #[test]
    fn the_placeholder_without_a_readable_hostname_is_an_error_naming_the_setting() {
        let error = expand_instance_id("enricher-{hostname}", || None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("instance_id"), "{error}");
        assert!(error.contains("{hostname}"), "{error}");
    }

    #[test]
    fn hostname_is_the_kernel_hostname_on_linux() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("a Linux machine");
        assert_eq!(hostname().as_deref(), Some(kernel.trim()));
    }
}
