//! A load generator for the gateway: signs N distinct `customer.updated` events and posts them to
//! a URL, then prints throughput, status counts and latency percentiles (an HDR histogram), and a
//! last `BENCH {json}` line for `scripts/bench.sh`. Bounded in count (`--events`) and time
//! (`--max-seconds`); meant for 127.0.0.1.
//!
//! * `--mode closed` (the default): `--concurrency` requests in flight at once, each sent when
//!   the last one answered; latency from each request's send.
//! * `--mode open --rate N`: one request every 1/N s whatever the answers do (at most
//!   `--max-in-flight` outstanding); latency from each request's *scheduled* send time, so a slow
//!   answer also delays what queues behind it in the measurement, as it would for Stripe. A request
//!   that finds no free in-flight slot at its time is not sent and is counted (`skipped`), and one
//!   sent more than 10 ms after its time is counted as `late`.
//! * `--e2e-emulator URL`: every event is a distinct customer, and the generator polls the
//!   Dataverse emulator's contacts (one query every 20 ms for rows newer than the last seen) to
//!   time each event from its 2xx to its contact appearing; events whose contact has not appeared
//!   within `--e2e-deadline-seconds` after the last answer are counted as missing.
//!
//! `cargo run --release -p gateway --example loadgen -- --url http://127.0.0.1:8080/webhooks/stripe
//!  --secret whsec_… --events 20000 --concurrency 32`

#[allow(dead_code)]
mod support;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use gateway::signature;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// A fixed number of requests in flight.
    Closed,
    /// A fixed arrival rate (`--rate`).
    Open,
}

#[derive(Debug, Parser)]
struct Args {
    /// Webhook URL to drive.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/stripe")]
    url: String,
    /// Signing secret the target verifies with.
    #[arg(long, env = "STRIPE_WEBHOOK_SECRET")]
    secret: String,
    /// Distinct events to send.
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Closed loop or open loop.
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    mode: Mode,
    /// Requests in flight at once (closed loop).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Requests per second (open loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Requests outstanding at most (open loop); one that finds none free is skipped and counted.
    #[arg(long, default_value_t = 10_000)]
    max_in_flight: usize,
    /// Stop sending after this long, whatever is left.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Distinct customers the events are spread over (the record key); ignored with
    /// `--e2e-emulator`, where every event is its own customer.
    #[arg(long, default_value_t = 1_000)]
    customers: usize,
    /// Prefix of the event ids; defaults to one unique per run so reruns are never duplicates.
    #[arg(long)]
    run_id: Option<String>,
    /// The Dataverse emulator's base URL: measure each event until its contact appears there.
    #[arg(long)]
    e2e_emulator: Option<String>,
    /// How long after the last answer to wait for contacts still missing.
    #[arg(long, default_value_t = 30)]
    e2e_deadline_seconds: u64,
    /// Client credentials for the emulator's token endpoint.
    #[arg(long, default_value = "sink-dataverse")]
    e2e_client_id: String,
    #[arg(long, default_value = "local-secret")]
    e2e_client_secret: String,
    /// The contacts column holding the Stripe customer id (the sink's alternate key).
    #[arg(long, default_value = "new_stripecustomerid")]
    e2e_key_column: String,
    /// A name for this run in the machine-readable line.
    #[arg(long, default_value = "loadgen")]
    label: String,
}

/// What every request task reports into.
struct Results {
    latency: Mutex<Histogram<u64>>,
    statuses: Mutex<BTreeMap<String, usize>>,
    /// When each event's 2xx arrived, by customer id (end-to-end mode only).
    acked: Option<Mutex<HashMap<String, Instant>>>,
    done: AtomicUsize,
}

struct Request {
    customer: String,
    body: String,
    header: String,
}

async fn post(client: &reqwest::Client, url: &str, request: &Request) -> String {
    let outcome = client
        .post(url)
        .header("content-type", "application/json; charset=utf-8")
        .header("stripe-signature", &request.header)
        .body(request.body.clone())
        .send()
        .await;
    match outcome {
        Ok(response) => {
            let status = response.status().as_u16().to_string();
            // Read the body so the connection goes back to the pool.
            let _ = response.bytes().await;
            status
        }
        Err(e) if e.is_timeout() => "timeout".to_string(),
        Err(_) => "error".to_string(),
    }
}

fn finish(results: &Results, request: &Request, status: String, since: Instant) {
    let now = Instant::now();
    support::record(&mut results.latency.lock().unwrap(), now.duration_since(since));
    if let Some(acked) = &results.acked
        && status.starts_with('2')
    {
        acked.lock().unwrap().insert(request.customer.clone(), now);
    }
    *results.statuses.lock().unwrap().entry(status).or_default() += 1;
    results.done.fetch_add(1, Ordering::Relaxed);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.concurrency > 0 && args.events > 0 && args.max_in_flight > 0,
        "events, concurrency and max-in-flight must be positive"
    );
    let rate = match (args.mode, args.rate) {
        (Mode::Open, Some(r)) if r > 0.0 => r,
        (Mode::Open, _) => anyhow::bail!("--mode open needs a positive --rate"),
        (Mode::Closed, _) => 0.0,
    };
    let run_id = args.run_id.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{nanos:x}")
    });
    let e2e = args.e2e_emulator.is_some();
    let customers = if e2e { args.events } else { args.customers.max(1) };
    let prefix = if e2e {
        format!("cus_e2e_{run_id}_")
    } else {
        "cus_load_".to_string()
    };

    // Everything is signed up front so the measured loop only sends; the run must finish within
    // the gateway's tolerance (300 s by default), which `--max-seconds` keeps it under.
    let t = signature::now_unix();
    let requests: Arc<Vec<Request>> = Arc::new(
        (0..args.events)
            .map(|n| {
                let customer = format!("{prefix}{}", n % customers);
                let body = support::event(&format!("evt_load_{run_id}_{n}"), &customer, n, n / customers);
                let header = signature::signature_header(&args.secret, t, body.as_bytes());
                Request {
                    customer,
                    body,
                    header,
                }
            })
            .collect(),
    );

    let pool = match args.mode {
        Mode::Closed => args.concurrency,
        Mode::Open => args.max_in_flight.min(1024),
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(pool)
        .timeout(Duration::from_secs(35))
        .build()?;
    let results = Arc::new(Results {
        latency: Mutex::new(support::histogram()),
        statuses: Mutex::new(BTreeMap::new()),
        acked: e2e.then(|| Mutex::new(HashMap::with_capacity(args.events))),
        done: AtomicUsize::new(0),
    });

    let poller = match &args.e2e_emulator {
        Some(base) => Some(Poller::start(&args, base, &prefix).await?),
        None => None,
    };

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_seconds);
    let (skipped, late) = match args.mode {
        Mode::Closed => {
            closed(&args, &client, &requests, &results, deadline).await?;
            (0, 0)
        }
        Mode::Open => open(&args, rate, &client, &requests, &results, started, deadline).await?,
    };
    let elapsed = started.elapsed();

    let done = results.done.load(Ordering::Relaxed);
    let statuses = results.statuses.lock().unwrap().clone();
    let latency = results.latency.lock().unwrap().clone();
    let ok = statuses
        .iter()
        .filter(|(s, _)| s.starts_with('2'))
        .map(|(_, n)| n)
        .sum::<usize>();
    println!("url          {}", args.url);
    match args.mode {
        Mode::Closed => println!(
            "requests     {done} of {} (closed loop, concurrency {})",
            args.events, args.concurrency
        ),
        Mode::Open => println!(
            "requests     {done} of {} (open loop, {rate} req/s; {skipped} skipped, {late} sent late)",
            args.events
        ),
    }
    println!("statuses     {statuses:?}");
    println!("elapsed      {:.2} s", elapsed.as_secs_f64());
    println!("throughput   {:.0} req/s", done as f64 / elapsed.as_secs_f64());

    let mut line = json!({
        "label": args.label,
        "mode": match args.mode { Mode::Closed => "closed", Mode::Open => "open" },
        "concurrency": (args.mode == Mode::Closed).then_some(args.concurrency),
        "rate": (args.mode == Mode::Open).then_some(rate),
        "events": args.events,
        "done": done,
        "ok": ok,
        "statuses": statuses,
        "skipped": skipped,
        "late": late,
        "elapsed_s": elapsed.as_secs_f64(),
        "throughput": done as f64 / elapsed.as_secs_f64(),
        "latency_ms": support::percentiles(&latency),
    });

    if let (Some(poller), Some(acked)) = (poller, &results.acked) {
        let acked = acked.lock().unwrap().clone();
        let (e2e, missing) = poller
            .finish(&acked, Duration::from_secs(args.e2e_deadline_seconds))
            .await;
        println!(
            "e2e          {} of {} contacts appeared, {missing} missing after {} s",
            acked.len() - missing,
            acked.len(),
            args.e2e_deadline_seconds
        );
        println!("{}", support::latency_line("e2e ms", &e2e));
        line["e2e_ms"] = support::percentiles(&e2e);
        line["e2e_missing"] = json!(missing);
        line["e2e_acked"] = json!(acked.len());
    }
    // Kept last among the human lines: `bench-drain.sh` shows the last three.
    println!("{}", support::latency_line("latency ms", &latency));
    support::print_machine_line(&line);
    Ok(())
}

async fn closed(
    args: &Args,
    client: &reqwest::Client,
    requests: &Arc<Vec<Request>>,
    results: &Arc<Results>,
    deadline: Instant,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, requests, next, results, url) = (
                client.clone(),
                requests.clone(),
                next.clone(),
                results.clone(),
                args.url.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests.len() || Instant::now() > deadline {
                        return;
                    }
                    let sent = Instant::now();
                    let status = post(&client, &url, &requests[i]).await;
                    finish(&results, &requests[i], status, sent);
                }
            })
        })
        .collect();
    for w in workers {
        w.await?;
    }
    Ok(())
}

/// Sends request *i* at `started + i / rate`; returns (skipped, late).
async fn open(
    args: &Args,
    rate: f64,
    client: &reqwest::Client,
    requests: &Arc<Vec<Request>>,
    results: &Arc<Results>,
    started: Instant,
    deadline: Instant,
) -> anyhow::Result<(usize, usize)> {
    let slots = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let (mut skipped, mut late) = (0, 0);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..requests.len() {
        let scheduled = started + interval.mul_f64(i as f64);
        if scheduled > deadline {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        if scheduled.elapsed() > Duration::from_millis(10) {
            late += 1;
        }
        let (client, requests, results, url) = (
            client.clone(),
            requests.clone(),
            results.clone(),
            args.url.clone(),
        );
        tasks.spawn(async move {
            let status = post(&client, &url, &requests[i]).await;
            finish(&results, &requests[i], status, scheduled);
            drop(permit);
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while let Some(joined) = tasks.join_next().await {
        joined?;
    }
    Ok((skipped, late))
}

/// Watches the emulator's contacts table for rows of this run, noting when each first appeared.
struct Poller {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Poller {
    async fn start(args: &Args, base: &str, prefix: &str) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let token = harness::inspect::emulator_token(
            &http,
            &base,
            "local",
            &args.e2e_client_id,
            &args.e2e_client_secret,
        )
        .await?;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let key = args.e2e_key_column.clone();
        let prefix = prefix.to_string();
        let task = {
            let (seen, stop) = (seen.clone(), stop.clone());
            tokio::spawn(async move {
                // Only rows changed after the newest one already seen: each poll lists what is new.
                let mut newest: u64 = 0;
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let filter = format!("startswith({key},'{prefix}') and versionnumber gt {newest}");
                    let mut url = Some(format!("{base}/api/data/v9.2/contacts"));
                    let mut query = Some(vec![
                        ("$select".to_string(), format!("{key},versionnumber")),
                        ("$filter".to_string(), filter),
                        ("$orderby".to_string(), "versionnumber asc".to_string()),
                    ]);
                    while let Some(next) = url.take() {
                        let mut request = http.get(&next).bearer_auth(&token);
                        if let Some(q) = query.take() {
                            request = request.query(&q);
                        }
                        let page: Value = match request.send().await {
                            Ok(r) if r.status().is_success() => match r.json().await {
                                Ok(v) => v,
                                Err(_) => break,
                            },
                            Ok(r) => {
                                eprintln!("e2e poll: {}", r.status());
                                break;
                            }
                            Err(e) => {
                                eprintln!("e2e poll: {e}");
                                break;
                            }
                        };
                        let now = Instant::now();
                        let mut seen = seen.lock().unwrap();
                        for row in page["value"].as_array().into_iter().flatten() {
                            if let Some(id) = row[&key].as_str() {
                                seen.entry(id.to_string()).or_insert(now);
                            }
                            if let Some(v) = row["versionnumber"].as_u64() {
                                newest = newest.max(v);
                            }
                        }
                        url = page["@odata.nextLink"].as_str().map(str::to_string);
                    }
                }
            })
        };
        Ok(Poller { seen, stop, task })
    }

    /// Waits up to `deadline` for every acknowledged customer, then stops polling. Returns the
    /// 2xx-to-contact latencies and how many never appeared.
    async fn finish(self, acked: &HashMap<String, Instant>, deadline: Duration) -> (Histogram<u64>, usize) {
        let until = Instant::now() + deadline;
        loop {
            let all = {
                let seen = self.seen.lock().unwrap();
                acked.keys().all(|k| seen.contains_key(k))
            };
            if all || Instant::now() > until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let seen = self.seen.lock().unwrap();
        let mut h = support::histogram();
        let mut missing = 0;
        for (customer, at) in acked {
            match seen.get(customer) {
                // A contact can show up before the answer reaches the generator: count that as 0.
                Some(appeared) => support::record(&mut h, appeared.saturating_duration_since(*at)),
                None => missing += 1,
            }
        }
        (h, missing)
    }
}
