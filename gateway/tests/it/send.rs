//! `gateway send`, the real binary, against a running gateway on a real broker: what it sends is
//! accepted and lands in the topic, a wrong secret or a stale signature makes it fail with the
//! gateway's reason, and `--rate` keeps its schedule.

use std::time::{Duration, Instant, SystemTime};

use gateway::WEBHOOK_PATH;
use harness::{TestEnv, unique};

use super::{Gateway, SECRET, config, count, read_until};

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `gateway send --url <gateway> ARGS…` with no `WEBHOOK_*` variables from the caller.
async fn send(gw: &Gateway, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("send")
        .args(["--url", &gw.url(WEBHOOK_PATH)])
        .args(args)
        .env_remove("WEBHOOK_SECRET")
        .env_remove("WEBHOOK_URL")
        .output()
        .await
        .expect("gateway send runs");
    Run {
        success: output.status.success(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// The event ids of the lines answered `status`.
fn answered(stdout: &str, status: u16) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.contains(&format!(" -> {status} ")))
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_events_are_accepted_and_land_in_the_topic() {
    let env = TestEnv::start().await.unwrap();
    let topic = unique("stripe.events");
    let gw = Gateway::start_ready(config(&env, &topic)).await;

    let one = send(
        &gw,
        &[
            "--secret",
            SECRET,
            "--type",
            "customer.created",
            "--customer",
            "cus_SendIt1",
        ],
    )
    .await;
    assert!(one.success, "{}{}", one.stdout, one.stderr);
    let created = answered(&one.stdout, 200);
    assert_eq!(created.len(), 1, "{}", one.stdout);
    assert!(one.stdout.contains(r#""received":true"#), "{}", one.stdout);
    assert!(
        one.stdout.contains("sent 1, 2xx 1, non-2xx 0, errors 0"),
        "{}",
        one.stdout
    );

    let started = Instant::now();
    let many = send(&gw, &["--secret", SECRET, "--count", "20", "--rate", "50"]).await;
    let took = started.elapsed();
    assert!(many.success, "{}{}", many.stdout, many.stderr);
    assert!(
        many.stdout.contains("sent 20, 2xx 20, non-2xx 0, errors 0"),
        "{}",
        many.stdout
    );
    let ids = answered(&many.stdout, 200);
    assert_eq!(ids.len(), 20, "{}", many.stdout);
    // 20 sends 20 ms apart: the last is due 380 ms after the first.
    assert!(took >= Duration::from_millis(380), "{took:?}");

    let sentinel = send(&gw, &["--secret", SECRET, "--type", "customer.updated"]).await;
    assert!(sentinel.success, "{}", sentinel.stdout);
    let sentinel = answered(&sentinel.stdout, 200).pop().unwrap();
    let records = read_until(&env, &topic, &sentinel).await;

    assert_eq!(count(&records, &created[0]), 1);
    let record = records.iter().find(|r| r.event.event_id == created[0]).unwrap();
    assert_eq!(record.key.as_deref(), Some("cus_SendIt1"));
    assert_eq!(record.event.event_type, "customer.created");
    assert_eq!(record.event.object_id.as_deref(), Some("cus_SendIt1"));
    for id in &ids {
        assert_eq!(count(&records, id), 1, "{id}");
    }
    // The generated traffic is customer histories: each begins with its creation.
    let kinds: Vec<&str> = records
        .iter()
        .filter(|r| ids.contains(&r.event.event_id))
        .map(|r| r.event.event_type.as_str())
        .collect();
    assert_eq!(kinds.first(), Some(&"customer.created"), "{kinds:?}");
    assert!(kinds.contains(&"customer.updated"), "{kinds:?}");
    gw.stop(Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_events_make_send_fail_with_the_gateways_reason() {
    let env = TestEnv::start().await.unwrap();
    let topic = unique("stripe.events");
    let gw = Gateway::start_ready(config(&env, &topic)).await;

    let wrong = send(&gw, &["--secret", "whsec_not_the_gateways"]).await;
    assert!(!wrong.success, "{}", wrong.stdout);
    assert_eq!(answered(&wrong.stdout, 400).len(), 1, "{}", wrong.stdout);
    assert!(
        wrong
            .stdout
            .contains("No signatures found matching the expected signature for payload"),
        "{}",
        wrong.stdout
    );
    assert!(
        wrong.stdout.contains("sent 1, 2xx 0, non-2xx 1, errors 0"),
        "{}",
        wrong.stdout
    );
    assert!(
        wrong.stderr.contains("1 of 1 events were not answered 2xx"),
        "{}",
        wrong.stderr
    );

    // The gateway allows 300 s; a signature made 400 s ago is refused.
    let stale = send(&gw, &["--secret", SECRET, "--timestamp=-400"]).await;
    assert!(!stale.success);
    assert!(
        stale.stdout.contains("Timestamp outside the tolerance zone"),
        "{}",
        stale.stdout
    );

    // A dry run sends nothing and prints a header that verifies the printed body.
    let dry = send(&gw, &["--secret", SECRET, "--dry-run", "--timestamp=-400"]).await;
    assert!(dry.success, "{}", dry.stderr);
    let header = dry
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Stripe-Signature: "))
        .expect("a signature line");
    let body = dry.stdout.split_once("\n\n").unwrap().1.trim_end_matches('\n');
    let lenient = gateway::Verifier::new([SECRET], Duration::from_secs(500), Duration::from_secs(60));
    lenient
        .verify(
            Some(header.as_bytes()),
            body.to_string().into(),
            SystemTime::now(),
        )
        .expect("the printed header signs the printed body");
    let strict = gateway::Verifier::new([SECRET], Duration::from_secs(300), Duration::from_secs(60));
    assert!(matches!(
        strict.verify(
            Some(header.as_bytes()),
            body.to_string().into(),
            SystemTime::now()
        ),
        Err(gateway::SignatureError::TimestampTooOld { .. })
    ));

    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"gateway_requests_total{outcome="accepted"} 0"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gateway_requests_total{outcome="bad_signature"} 2"#),
        "{metrics}"
    );
    gw.stop(Duration::from_secs(15)).await;
}
