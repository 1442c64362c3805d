//! The test harness: real dependencies as child processes on free ports, for component and
//! end-to-end tests.
//!
//! * [`Broker`] — a Kafka-protocol broker (Tansu, SQLite storage so data survives a restart).
//! * [`Registry`] — the workspace's Confluent-compatible schema registry binary.
//! * [`Service`] — any other process (the stages themselves, the Dataverse emulator).
//! * [`pipeline::Pipeline`] — everything at once, as a user runs it, for end-to-end tests.
//! * [`unique`] — topic and group names no other test uses.
//! * [`wait_until`] — poll a condition with a deadline, instead of sleeping.
//! * [`workload`] — generated Stripe customer histories, the state they must end in, and a
//!   Stripe-like sender that retries every delivery until it is acknowledged.
//! * [`stripe_fake::StripeFake`] — a local fake of Stripe's events and customers API (pagination,
//!   filters, retention, auth, rate limiting), in-process on a free port.
//! * [`otlp::Receiver`] — an OTLP/HTTP trace receiver keeping the spans the stages export.
//! * [`inspect`] — what the stages did: watermarks, committed offsets, caught-up waits, a topic
//!   read back, a stage's `/metrics`.
//!
//! Every child is killed when its handle is dropped, including when a test panics.
//! Binaries: Tansu from the project cache (`scripts/setup.sh` installs it; `TANSU_BIN`
//! overrides), workspace binaries from the same target folder as the running test (built by
//! `cargo build --workspace --bins`, which `scripts/test.sh` runs first).

use std::{
    fs::File,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use common::config::KafkaSettings;
use rdkafka::{
    ClientConfig,
    consumer::{BaseConsumer, Consumer},
};
use tempfile::TempDir;

pub mod inspect;
pub mod otlp;
pub mod pipeline;
pub mod stripe_fake;
pub mod workload;

/// The pinned broker version the set-up installs.
pub const TANSU_VERSION: &str = "0.6.0";

/// The cache outside the checkout: `$STRIPE_PIPELINE_CACHE`, else `$XDG_CACHE_HOME/stripe-pipeline`,
/// else `~/.cache/stripe-pipeline`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STRIPE_PIPELINE_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("stripe-pipeline")
}

/// The Tansu binary: `$TANSU_BIN`, else the version-keyed cache folder.
pub fn tansu_bin() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("TANSU_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            cache_dir()
                .join(format!("tansu-{TANSU_VERSION}"))
                .join("bin")
                .join("tansu")
        });
    if !path.is_file() {
        bail!(
            "Tansu broker not found at {}: run `bash scripts/setup.sh` (or set TANSU_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// A binary of this workspace, from the target folder of the running test executable.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target folder")?;
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --workspace --bins`",
            path.display()
        );
    }
    Ok(path)
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 works on any test machine")
}

/// A name no other test (in this or a concurrent run) uses: `<prefix>-<pid>-<n>-<random>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// Polls `check` every 50 ms until it yields `Some`, or fails after `deadline` naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A scratch folder for a process's data and log, removed afterwards unless
/// `HARNESS_KEEP_LOGS` is set (then its path is printed, for reading the logs of a failed run).
pub fn scratch_dir() -> std::io::Result<TempDir> {
    let keep = std::env::var_os("HARNESS_KEEP_LOGS").is_some();
    let dir = tempfile::Builder::new()
        .prefix("harness-")
        .disable_cleanup(keep)
        .tempdir()?;
    if keep {
        eprintln!("harness: keeping {}", dir.path().display());
    }
    Ok(dir)
}

/// A child process that is killed (SIGKILL) when dropped. Output goes to a log file, shown when
/// the process fails to become ready.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildProcess {
    /// Starts `command`, logging to `log`. Environment variables that would leak the test
    /// runner's settings into the child (`RUST_LOG` is kept) are the caller's to set.
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> anyhow::Result<Self> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command.spawn().with_context(|| format!("starting {name}"))?;
        Ok(ChildProcess {
            name: name.to_string(),
            child,
            log,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of the process's output, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// SIGKILL, as a crash would: no chance to flush or commit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if the process has not exited within `grace`. Returns the exit
    /// status when it exited by itself.
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }

    /// Waits until `addr` accepts TCP connections, failing early if the process exits.
    pub async fn wait_for_port(&mut self, addr: SocketAddr, deadline: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if !self.is_running() {
                bail!(
                    "{} exited before listening on {addr}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if start.elapsed() > deadline {
                bail!(
                    "{} did not listen on {addr} within {deadline:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Kafka-protocol broker on a free port with SQLite storage in a temporary folder. Stopping and
/// starting it again keeps its data, port and cluster id.
#[derive(Debug)]
pub struct Broker {
    port: u16,
    dir: TempDir,
    process: Option<ChildProcess>,
    starts: u32,
}

impl Broker {
    pub async fn start() -> anyhow::Result<Self> {
        let mut broker = Broker {
            port: free_port(),
            dir: scratch_dir()?,
            process: None,
            starts: 0,
        };
        broker.start_again().await?;
        Ok(broker)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn kafka_settings(&self) -> KafkaSettings {
        KafkaSettings {
            bootstrap_servers: self.bootstrap_servers(),
            ..KafkaSettings::default()
        }
    }

    /// Kills the broker (SIGKILL). Its data stays.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts the broker (again) on the same port and storage, and waits until it serves metadata.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.starts += 1;
        apply_storage_indexes(&self.dir.path().join("tansu.db")).await?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut command = Command::new(tansu_bin()?);
        command
            .arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&url)
            .arg("--storage-engine")
            .arg("sqlite://tansu.db")
            .current_dir(self.dir.path())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("SCHEMA_REGISTRY")
            .env(
                "RUST_LOG",
                std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()),
            );
        let log = self.dir.path().join(format!("broker-{}.log", self.starts));
        let mut process = ChildProcess::spawn("tansu broker", command, log)?;
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        process.wait_for_port(addr, Duration::from_secs(30)).await?;
        let bootstrap = self.bootstrap_servers();
        wait_until("the broker to serve metadata", Duration::from_secs(30), || {
            let bootstrap = bootstrap.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let consumer: BaseConsumer = ClientConfig::new()
                        .set("bootstrap.servers", &bootstrap)
                        .create()
                        .ok()?;
                    consumer
                        .fetch_metadata(None, Duration::from_secs(2))
                        .ok()
                        .map(|_| ())
                })
                .await
                .ok()
                .flatten()
            }
        })
        .await
        .with_context(|| process.log_tail())?;
        self.process = Some(process);
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ChildProcess::is_running)
    }
}

/// Adds the index the broker's SQLite storage lacks (`dev/tansu/indexes.sql`: without it every
/// fetched record costs a scan of every header the broker holds) to its database file, creating
/// the file if needed, with Debian's `sqlite3`. Only while the broker is stopped: it does not wait
/// for another writer's lock. Safe on an existing database.
pub async fn apply_storage_indexes(db: &Path) -> anyhow::Result<()> {
    const INDEXES: &str = include_str!("../../dev/tansu/indexes.sql");
    let mut child = tokio::process::Command::new("sqlite3")
        .arg("-bail")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running sqlite3 (bash scripts/setup.sh installs it)")?;
    let mut stdin = child.stdin.take().context("sqlite3's stdin")?;
    tokio::io::AsyncWriteExt::write_all(&mut stdin, INDEXES.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "adding the broker's storage index to {} failed: {}",
            db.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The workspace's schema registry on a free port, persisting to a temporary folder, so a restart
/// keeps its schema ids.
#[derive(Debug)]
pub struct Registry {
    port: u16,
    dir: TempDir,
    process: Option<ChildProcess>,
    starts: u32,
}

impl Registry {
    pub async fn start() -> anyhow::Result<Self> {
        let mut registry = Registry {
            port: free_port(),
            dir: scratch_dir()?,
            process: None,
            starts: 0,
        };
        registry.start_again().await?;
        Ok(registry)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the registry (SIGKILL). Its data stays.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.starts += 1;
        let mut command = Command::new(workspace_bin("schema-registry")?);
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(self.dir.path().join("data"));
        let log = self.dir.path().join(format!("registry-{}.log", self.starts));
        let mut process = ChildProcess::spawn("schema-registry", command, log)?;
        process
            .wait_for_port(([127, 0, 0, 1], self.port).into(), Duration::from_secs(20))
            .await?;
        let url = format!("{}/", self.url());
        let client = reqwest::Client::new();
        wait_until("the schema registry to answer", Duration::from_secs(20), || {
            let request = client.get(&url).send();
            async move { request.await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await
        .with_context(|| process.log_tail())?;
        self.process = Some(process);
        Ok(())
    }
}

/// A broker and a registry: what every component test needs.
#[derive(Debug)]
pub struct TestEnv {
    pub broker: Broker,
    pub registry: Registry,
}

impl TestEnv {
    pub async fn start() -> anyhow::Result<Self> {
        let (broker, registry) = tokio::try_join!(Broker::start(), Registry::start())?;
        Ok(TestEnv { broker, registry })
    }

    pub fn kafka_settings(&self) -> KafkaSettings {
        self.broker.kafka_settings()
    }

    pub fn registry_settings(&self) -> common::config::RegistrySettings {
        common::config::RegistrySettings {
            url: self.registry.url(),
            ..Default::default()
        }
    }

    /// Creates `name` with `partitions` partitions.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        common::kafka::ensure_topics(
            &self.kafka_settings(),
            &[common::kafka::TopicSpec::new(name, partitions)],
            "topics",
        )
        .await
        .with_context(|| format!("creating topic {name}"))
    }
}

/// Any other process under test (a stage, the Dataverse emulator), started from a workspace
/// binary with its own environment and killed on drop.
#[derive(Debug)]
pub struct Service {
    pub process: ChildProcess,
    pub dir: TempDir,
}

impl Service {
    /// Starts workspace binary `bin` with `args` and `env`, then waits until `addr` listens.
    pub async fn start(
        bin: &str,
        args: &[String],
        env: &[(String, String)],
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let dir = scratch_dir()?;
        let mut command = Command::new(workspace_bin(bin)?);
        command.args(args).current_dir(dir.path());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut process = ChildProcess::spawn(bin, command, dir.path().join(format!("{bin}.log")))?;
        process.wait_for_port(addr, Duration::from_secs(30)).await?;
        Ok(Service { process, dir })
    }
}
