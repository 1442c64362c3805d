//! `gateway send`: signs Stripe events the way Stripe does and POSTs them to a webhook URL, for
//! people testing a deployment without a Stripe account (the Stripe CLI's `trigger`, offline).
//! Events come from a file or from [`generate`]; signing is [`signature::signature_header`].
//!
//! Each answer is printed as one line; a summary closes the run. With `--rate` sends are
//! scheduled (open loop: a slow answer does not delay the next send); without it, up to
//! `--concurrency` requests are in flight. One customer's events are sent one after the other,
//! each after the previous was answered, so they reach the topic in the order they were made.

pub mod generate;

use std::{
    collections::HashMap,
    io::{Read, Write},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use common::config::HumanDuration;
use tokio::{
    sync::{Semaphore, oneshot},
    task::JoinSet,
};

use self::generate::{Event, EventKind, Generator, Plan, Rng};
use crate::signature;

/// Where `scripts/run-local.sh` serves the webhook.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080/webhooks/stripe";
/// The secret `scripts/run-local.sh` configures (never a real one).
pub const LOCAL_SECRET: &str = "whsec_local_development_secret";

/// `gateway send` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// Webhook URL to POST to.
    #[arg(long, env = "WEBHOOK_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Endpoint secret to sign with (`whsec_…`).
    #[arg(long, env = "WEBHOOK_SECRET", default_value = LOCAL_SECRET, hide_env_values = true)]
    pub secret: String,
    /// An event JSON as Stripe sends it, sent byte for byte (`-` reads stdin). Its `id` and
    /// `created` are kept, so `--count` above 1 sends the same event again.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["kind", "customer", "deletes", "seed"])]
    pub file: Option<PathBuf>,
    /// Generate events of this type. Without it (and without --file), one `customer.created`,
    /// or with --count above 1, customer histories: created, updates, sometimes deleted.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub kind: Option<EventKind>,
    /// The customer the generated events are about (default: new random ids).
    #[arg(long, value_name = "cus_…")]
    pub customer: Option<String>,
    /// How many events to send.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Sends per second, on a fixed schedule (default: as fast as --concurrency allows).
    #[arg(long, value_name = "PER_SECOND", value_parser = positive)]
    pub rate: Option<f64>,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..10_000))]
    pub concurrency: u64,
    /// Share of generated histories that end in `customer.deleted` (0 to 1).
    #[arg(long, default_value_t = 0.1, value_parser = share)]
    pub deletes: f64,
    /// Seed for the generated data (default: from the clock), to repeat a run exactly.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The signature's `t`: unix seconds, or `-N`/`+N` seconds from now (e.g. `--timestamp=-400`
    /// to test the gateway's tolerance). Default: the time of each send.
    #[arg(long, value_name = "T", allow_hyphen_values = true, value_parser = parse_timestamp)]
    pub timestamp: Option<Timestamp>,
    /// How long to wait for each answer.
    #[arg(long, default_value = "10s")]
    pub timeout: HumanDuration,
    /// Print each body and its Stripe-Signature header instead of sending.
    #[arg(long)]
    pub dry_run: bool,
}

/// The signing time requested with `--timestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamp {
    /// Unix seconds.
    At(i64),
    /// Seconds from the time of each send.
    FromNow(i64),
}

impl Timestamp {
    fn resolve(self, now: i64) -> i64 {
        match self {
            Timestamp::At(t) => t,
            Timestamp::FromNow(d) => now.saturating_add(d),
        }
    }
}

fn parse_timestamp(s: &str) -> Result<Timestamp, String> {
    let s = s.trim();
    let invalid = || format!("expected unix seconds or -N/+N seconds from now, got `{s}`");
    if let Some(rest) = s.strip_prefix('+') {
        return rest.parse().map(Timestamp::FromNow).map_err(|_| invalid());
    }
    if s.starts_with('-') {
        return s.parse().map(Timestamp::FromNow).map_err(|_| invalid());
    }
    s.parse::<u32>()
        .map(|t| Timestamp::At(i64::from(t)))
        .map_err(|_| invalid())
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("expected a number above 0, got `{s}`")),
    }
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("expected a number from 0 to 1, got `{s}`")),
    }
}

/// Where the events come from.
enum Source {
    /// One file's bytes, sent `count` times.
    File {
        event: Event,
        left: u64,
    },
    Generated(Generator),
}

impl Source {
    fn next(&mut self) -> Option<Event> {
        match self {
            Source::File { event, left } => {
                if *left == 0 {
                    return None;
                }
                *left -= 1;
                Some(event.clone())
            }
            Source::Generated(g) => g.next_at(signature::now_unix()),
        }
    }
}

fn source(args: &SendArgs) -> anyhow::Result<Source> {
    if let Some(path) = &args.file {
        let body = if path.as_os_str() == "-" {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .context("reading the event from stdin")?;
            body
        } else {
            std::fs::read(path).with_context(|| format!("reading the event from {}", path.display()))?
        };
        if body.is_empty() {
            bail!("--file {}: the file is empty", path.display());
        }
        return Ok(Source::File {
            event: Event::from_bytes(body),
            left: args.count,
        });
    }
    let plan = match args.kind {
        Some(kind) => Plan::Single {
            kind,
            customer: args.customer.clone(),
        },
        None => Plan::Histories {
            customer: args.customer.clone(),
            deletes: args.deletes,
        },
    };
    let seed = args.seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    });
    let width = usize::try_from(args.concurrency).unwrap_or(usize::MAX);
    Ok(Source::Generated(Generator::new(
        plan,
        args.count,
        width,
        Rng::new(seed),
    )))
}

/// How one send ended.
#[derive(Debug)]
enum Answer {
    Status { status: u16, latency: Duration },
    Failed,
}

/// The run's totals.
#[derive(Debug, Default)]
pub struct Summary {
    pub sent: u64,
    pub ok: u64,
    pub not_ok: u64,
    pub errors: u64,
    latencies: Vec<Duration>,
}

impl Summary {
    fn add(&mut self, answer: Answer) {
        self.sent += 1;
        match answer {
            Answer::Status { status, latency } => {
                self.latencies.push(latency);
                if (200..300).contains(&status) {
                    self.ok += 1;
                } else {
                    self.not_ok += 1;
                }
            }
            Answer::Failed => self.errors += 1,
        }
    }

    /// Sends that were not answered 2xx (non-2xx answers and errors).
    pub fn failed(&self) -> u64 {
        self.not_ok + self.errors
    }

    fn line(&mut self, elapsed: Duration) -> String {
        self.latencies.sort_unstable();
        let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3));
        let secs = elapsed.as_secs_f64();
        format!(
            "sent {}, 2xx {}, non-2xx {}, errors {}; latency p50 {}, p99 {}; {:.2} s, {:.1}/s",
            self.sent,
            self.ok,
            self.not_ok,
            self.errors,
            ms(percentile(&self.latencies, 0.50)),
            ms(percentile(&self.latencies, 0.99)),
            secs,
            if secs > 0.0 { self.sent as f64 / secs } else { 0.0 },
        )
    }
}

/// The nearest-rank percentile of sorted `values` (`q` in 0..=1).
fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Runs `gateway send`; the summary says how many sends were not answered 2xx.
pub async fn run(args: SendArgs) -> anyhow::Result<Summary> {
    if args.secret.is_empty() {
        bail!("--secret (or WEBHOOK_SECRET) is empty");
    }
    let url = reqwest::Url::parse(&args.url).with_context(|| format!("--url {:?} is not a URL", args.url))?;
    let mut source = source(&args)?;
    if args.dry_run {
        return dry_run(&args, &url, &mut source);
    }
    let http = reqwest::Client::builder()
        .timeout(args.timeout.into())
        .user_agent("Stripe/1.0 (+https://stripe.com/docs/webhooks)")
        .build()
        .context("creating the HTTP client")?;
    let shared = Arc::new(Shared {
        http,
        url,
        secret: args.secret.clone(),
        timestamp: args.timestamp,
        total: args.count,
    });
    let limit = Arc::new(Semaphore::new(
        usize::try_from(args.concurrency).unwrap_or(usize::MAX),
    ));
    // The answer-received signal of each customer's latest event, awaited by its next one.
    let mut last_of: HashMap<String, oneshot::Receiver<()>> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut summary = Summary::default();
    let start = Instant::now();
    let mut index = 0u64;
    while let Some(event) = source.next() {
        index += 1;
        let permit = match args.rate {
            Some(rate) => {
                let due = start + Duration::from_secs_f64((index - 1) as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                None
            }
            // Closed loop: wait for room before making the next request.
            None => Some(
                limit
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed"),
            ),
        };
        let (done, done_rx) = oneshot::channel();
        let previous = event.customer.clone().and_then(|c| last_of.insert(c, done_rx));
        let shared = shared.clone();
        let limit = limit.clone();
        tasks.spawn(async move {
            if let Some(previous) = previous {
                // Dropped unsent when the previous send ended: either way it is over.
                let _ = previous.await;
            }
            let _permit = match permit {
                Some(p) => p,
                None => limit
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed"),
            };
            let answer = shared.send(index, &event).await;
            let _ = done.send(());
            answer
        });
        while let Some(done) = tasks.try_join_next() {
            summary.add(done.context("a send task failed")?);
        }
    }
    while let Some(done) = tasks.join_next().await {
        summary.add(done.context("a send task failed")?);
    }
    println!("{}", summary.line(start.elapsed()));
    Ok(summary)
}

fn dry_run(args: &SendArgs, url: &reqwest::Url, source: &mut Source) -> anyhow::Result<Summary> {
    let mut out = std::io::stdout().lock();
    while let Some(event) = source.next() {
        let now = signature::now_unix();
        let t = args.timestamp.map_or(now, |ts| ts.resolve(now));
        writeln!(out, "POST {url}")?;
        writeln!(out, "Content-Type: application/json; charset=utf-8")?;
        writeln!(
            out,
            "Stripe-Signature: {}",
            signature::signature_header(&args.secret, t, &event.body)
        )?;
        writeln!(out)?;
        out.write_all(&event.body)?;
        writeln!(out)?;
        writeln!(out)?;
    }
    Ok(Summary::default())
}

/// What every send needs.
struct Shared {
    http: reqwest::Client,
    url: reqwest::Url,
    secret: String,
    timestamp: Option<Timestamp>,
    total: u64,
}

impl Shared {
    /// Signs and posts one event and prints its line.
    async fn send(&self, index: u64, event: &Event) -> Answer {
        let now = signature::now_unix();
        let t = self.timestamp.map_or(now, |ts| ts.resolve(now));
        let header = signature::signature_header(&self.secret, t, &event.body);
        let started = Instant::now();
        let result = self
            .http
            .post(self.url.clone())
            .header("content-type", "application/json; charset=utf-8")
            .header("stripe-signature", header)
            .body(event.body.clone())
            .send()
            .await;
        let what = format!(
            "[{index}/{}] {} {} {}",
            self.total,
            event.id,
            event.kind,
            event.customer.as_deref().unwrap_or("-")
        );
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                println!("{what} -> error: {}", chain(&e));
                return Answer::Failed;
            }
        };
        let status = response.status().as_u16();
        let body = match response.text().await {
            Ok(body) => one_line(&body),
            Err(e) => format!("(body unreadable: {})", chain(&e)),
        };
        let latency = started.elapsed();
        println!(
            "{what} -> {status} {body} ({:.1} ms)",
            latency.as_secs_f64() * 1e3
        );
        Answer::Status { status, latency }
    }
}

/// An error and its causes on one line (reqwest's own text omits the cause, e.g. "Connection
/// refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

/// A response body on one line, cut at 300 characters.
fn one_line(body: &str) -> String {
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&values, 0.50), Some(ms(50)));
        assert_eq!(percentile(&values, 0.99), Some(ms(99)));
        assert_eq!(percentile(&values, 1.0), Some(ms(100)));
        assert_eq!(percentile(&[ms(7)], 0.99), Some(ms(7)));
        assert_eq!(percentile(&[ms(1), ms(9)], 0.5), Some(ms(1)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn timestamps_are_absolute_or_relative() {
        assert_eq!(parse_timestamp("1700000000"), Ok(Timestamp::At(1_700_000_000)));
        assert_eq!(parse_timestamp("-400"), Ok(Timestamp::FromNow(-400)));
        assert_eq!(parse_timestamp("+120"), Ok(Timestamp::FromNow(120)));
        assert!(parse_timestamp("soon").is_err());
        assert!(parse_timestamp("").is_err());
        assert_eq!(Timestamp::FromNow(-400).resolve(1000), 600);
        assert_eq!(Timestamp::At(5).resolve(1000), 5);
    }

    #[test]
    fn summary_counts_and_reports() {
        let mut s = Summary::default();
        s.add(Answer::Status {
            status: 200,
            latency: ms(3),
        });
        s.add(Answer::Status {
            status: 400,
            latency: ms(5),
        });
        s.add(Answer::Failed);
        assert_eq!((s.sent, s.ok, s.not_ok, s.errors, s.failed()), (3, 1, 1, 1, 2));
        let line = s.line(Duration::from_secs(1));
        assert!(
            line.starts_with("sent 3, 2xx 1, non-2xx 1, errors 1; latency p50 3.0 ms, p99 5.0 ms"),
            "{line}"
        );
    }

    #[test]
    fn bodies_print_on_one_line() {
        assert_eq!(one_line("{\n  \"a\": 1\n}\n"), "{ \"a\": 1 }");
        let long = "x".repeat(400);
        assert_eq!(one_line(&long).chars().count(), 301);
    }

    #[test]
    fn the_cli_parses_every_option() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            send: SendArgs,
        }
        let cli = Cli::try_parse_from([
            "send",
            "--url",
            "http://127.0.0.1:1/webhooks/stripe",
            "--secret",
            "whsec_x",
            "--type",
            "customer.updated",
            "--customer",
            "cus_1",
            "--count",
            "3",
            "--rate",
            "2.5",
            "--concurrency",
            "4",
            "--timestamp",
            "-400",
            "--timeout",
            "2s",
            "--dry-run",
        ])
        .unwrap();
        let a = cli.send;
        assert_eq!(a.kind, Some(EventKind::Updated));
        assert_eq!((a.count, a.rate, a.concurrency), (3, Some(2.5), 4));
        assert_eq!(a.timestamp, Some(Timestamp::FromNow(-400)));
        assert_eq!(Duration::from(a.timeout), Duration::from_secs(2));
        assert!(a.dry_run);
        for bad in [
            &["send", "--count", "0"][..],
            &["send", "--rate", "0"],
            &["send", "--deletes", "2"],
            &["send", "--type", "invoice.paid"],
            &["send", "--file", "x.json", "--type", "customer.created"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
