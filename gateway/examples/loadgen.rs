//! A load generator for the gateway: signs N distinct `customer.updated` events and posts them to
//! a URL at a fixed concurrency, then prints throughput, status counts and latency percentiles.
//! Bounded in count (`--events`) and time (`--max-seconds`); meant for 127.0.0.1.
//!
//! `cargo run --release -p gateway --example loadgen -- --url http://127.0.0.1:8080/webhooks/stripe
//!  --secret whsec_… --events 20000 --concurrency 32`

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use gateway::signature;

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
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Stop sending after this long, whatever is left.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Distinct customers the events are spread over (the record key).
    #[arg(long, default_value_t = 1_000)]
    customers: usize,
    /// Prefix of the event ids; defaults to one unique per run so reruns are never duplicates.
    #[arg(long)]
    run_id: Option<String>,
}

fn event(id: &str, customer: &str, n: usize) -> String {
    format!(
        r#"{{
  "id": "{id}",
  "object": "event",
  "api_version": "2025-04-30.basil",
  "created": 1700000000,
  "data": {{
    "object": {{
      "id": "{customer}",
      "object": "customer",
      "address": {{"city": "Berlin", "country": "DE", "line1": "Street {n}", "line2": null, "postal_code": "10115", "state": null}},
      "description": null,
      "email": "customer{n}@example.com",
      "metadata": {{"order": "{n}"}},
      "name": "Customer {n}",
      "phone": "+4930123456",
      "preferred_locales": ["de"]
    }},
    "previous_attributes": {{"email": null}}
  }},
  "livemode": false,
  "pending_webhooks": 1,
  "request": {{"id": null, "idempotency_key": null}},
  "type": "customer.updated"
}}"#
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.concurrency > 0 && args.events > 0,
        "events and concurrency must be positive"
    );
    let run_id = args.run_id.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{nanos:x}")
    });

    // Everything is signed up front so the measured loop only sends; the run must finish within
    // the gateway's tolerance (300 s by default), which `--max-seconds` keeps it under.
    let t = signature::now_unix();
    let requests: Arc<Vec<(String, String)>> = Arc::new(
        (0..args.events)
            .map(|n| {
                let body = event(
                    &format!("evt_load_{run_id}_{n}"),
                    &format!("cus_load_{}", n % args.customers.max(1)),
                    n,
                );
                let header = signature::signature_header(&args.secret, t, body.as_bytes());
                (body, header)
            })
            .collect(),
    );

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(35))
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(args.events)));
    let statuses = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();

    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, requests, next, latencies, statuses, url) = (
                client.clone(),
                requests.clone(),
                next.clone(),
                latencies.clone(),
                statuses.clone(),
                args.url.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests.len() || Instant::now() > deadline {
                        return;
                    }
                    let (body, header) = &requests[i];
                    let sent = Instant::now();
                    let outcome = client
                        .post(&url)
                        .header("content-type", "application/json; charset=utf-8")
                        .header("stripe-signature", header)
                        .body(body.clone())
                        .send()
                        .await;
                    let key = match outcome {
                        Ok(response) => {
                            let status = response.status().as_u16().to_string();
                            // Read the body so the connection goes back to the pool.
                            let _ = response.bytes().await;
                            status
                        }
                        Err(e) if e.is_timeout() => "timeout".to_string(),
                        Err(_) => "error".to_string(),
                    };
                    let elapsed = sent.elapsed();
                    latencies.lock().unwrap().push(elapsed);
                    *statuses.lock().unwrap().entry(key).or_default() += 1;
                }
            })
        })
        .collect();
    for w in workers {
        w.await?;
    }
    let elapsed = started.elapsed();

    let mut latencies = Arc::try_unwrap(latencies)
        .map_err(|_| anyhow::anyhow!("workers still hold the results"))?
        .into_inner()?;
    latencies.sort();
    let statuses = statuses.lock().unwrap().clone();
    let done = latencies.len();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let idx = ((p / 100.0) * (latencies.len() - 1) as f64).round() as usize;
        latencies[idx].as_secs_f64() * 1000.0
    };
    println!("url          {}", args.url);
    println!(
        "requests     {done} of {} (concurrency {})",
        args.events, args.concurrency
    );
    println!("statuses     {statuses:?}");
    println!("elapsed      {:.2} s", elapsed.as_secs_f64());
    println!("throughput   {:.0} req/s", done as f64 / elapsed.as_secs_f64());
    println!(
        "latency ms   p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(100.0)
    );
    Ok(())
}
