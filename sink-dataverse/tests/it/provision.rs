//! `sink-dataverse provision` against the emulator started as a process with the bare contacts
//! table (no Stripe columns, no alternate key), everything as a user runs it: `--check` lists
//! what is missing and fails, the sink refuses to start naming it, `provision` creates it and
//! waits for the key's index, `--check` then passes, a second `provision` changes nothing, and
//! the sink starts and writes a contact.

use std::{net::SocketAddr, process::Output, time::Duration};

use harness::{Service, free_port, wait_until, workspace_bin};
use serde_json::Value;

use crate::support::{DEADLINE, Env, TENANT, assert_contact, upsert};

/// The environment a `sink-dataverse` process needs for this emulator.
fn sink_env(
    env: &Env,
    t: &crate::support::Topics,
    emulator: &str,
    listen: SocketAddr,
) -> Vec<(String, String)> {
    [
        ("KAFKA_BOOTSTRAP_SERVERS", env.env.broker.bootstrap_servers()),
        ("SCHEMA_REGISTRY_URL", env.env.registry.url()),
        ("SINK_LISTEN", listen.to_string()),
        ("SINK_GROUP", t.group.clone()),
        ("SINK_INPUT_TOPIC", t.input.clone()),
        ("SINK_DLQ_TOPIC", t.dlq.clone()),
        ("SINK_DATAVERSE__ENVIRONMENT_URL", emulator.to_string()),
        (
            "SINK_DATAVERSE__TOKEN_URL",
            format!("{emulator}/{TENANT}/oauth2/v2.0/token"),
        ),
        ("SINK_DATAVERSE__CLIENT_ID", "sink-dataverse".into()),
        ("SINK_DATAVERSE__CLIENT_SECRET", "local-secret".into()),
        ("SINK_CONSUMER__LAG_INTERVAL", "200ms".into()),
        ("SINK_BACKOFF__MAX", "1s".into()),
        ("SINK_TOPICS__REPLICATION_FACTOR", "1".into()),
        ("SINK_PROVISION__POLL_INTERVAL", "100ms".into()),
        ("RUST_LOG", "info,rdkafka=warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

async fn sink_command(env: &[(String, String)], args: &[&str]) -> (Output, String) {
    let mut command = tokio::process::Command::new(workspace_bin("sink-dataverse").unwrap());
    command.args(args).kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the command finishes")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, text)
}

async fn admin(emulator: &str, path: &str) -> Value {
    reqwest::get(format!("{emulator}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The columns and keys the emulator answers, as a token-holding client reads them.
async fn definitions(emulator: &str) -> Value {
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{emulator}/{TENANT}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sink-dataverse"),
            ("client_secret", "local-secret"),
            ("scope", &format!("{emulator}/.default")),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap();
    http.get(format!(
        "{emulator}/api/data/v9.2/{}",
        sink_dataverse::provision::schema_path("contacts")
    ))
    .bearer_auth(token)
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn provision_creates_what_the_sink_needs_and_the_sink_then_runs() {
    let env = Env::start().await;
    let t = env.topics(1).await;
    let port = free_port();
    let emulator_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let emulator_url = format!("http://{emulator_addr}");
    let _emulator = Service::start(
        "dataverse-emulator",
        &[
            "--listen".into(),
            emulator_addr.to_string(),
            "--bare-contacts".into(),
            "--key-pending-ms".into(),
            "400".into(),
            "--key-build-ms".into(),
            "800".into(),
        ],
        &[],
        emulator_addr,
    )
    .await
    .unwrap();
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let process_env = sink_env(&env, &t, &emulator_url, listen);

    // Before: --check lists what is missing and fails.
    let (output, text) = sink_command(&process_env, &["provision", "--check"]).await;
    assert!(!output.status.success(), "{text}");
    for column in [
        "new_stripecustomerid",
        "new_stripeeventcreated",
        "new_stripeeventrank",
        "new_stripeeventids",
        "new_stripedeleted",
        "new_stripecustomerid_key",
    ] {
        assert!(text.contains(column), "{column} in {text}");
    }
    assert!(
        text.contains("MISSING") && text.contains("The sink cannot run"),
        "{text}"
    );
    assert_eq!(
        admin(&emulator_url, "/_admin/stats").await["definitions_created"],
        0
    );

    // The sink refuses to start, naming the missing column and pointing to provision.
    let (output, text) = sink_command(&process_env, &[]).await;
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("new_stripeeventcreated (dataverse.created_column)")
            && text.contains("sink-dataverse provision"),
        "{text}"
    );

    // provision creates everything, shows progress and waits for the key.
    let (output, text) = sink_command(&process_env, &["provision"]).await;
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("created column new_stripeeventcreated (BigInt)"),
        "{text}"
    );
    assert!(
        text.contains("created alternate key new_stripecustomerid_key"),
        "{text}"
    );
    let pending = text.find("key new_stripecustomerid_key: Pending").expect(&text);
    let active = text.find("key new_stripecustomerid_key: Active").expect(&text);
    assert!(pending < active, "{text}");
    assert_eq!(
        admin(&emulator_url, "/_admin/stats").await["definitions_created"],
        6
    );

    // --check passes now.
    let (output, text) = sink_command(&process_env, &["provision", "--check"]).await;
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("Nothing missing") && !text.contains("MISSING"),
        "{text}"
    );

    // A second provision changes nothing.
    let before = definitions(&emulator_url).await;
    let (output, text) = sink_command(&process_env, &["provision"]).await;
    assert!(output.status.success(), "{text}");
    assert!(text.contains("Nothing to change"), "{text}");
    assert!(
        !text.contains("created column") && !text.contains("created alternate key"),
        "{text}"
    );
    assert_eq!(
        admin(&emulator_url, "/_admin/stats").await["definitions_created"],
        6
    );
    assert_eq!(definitions(&emulator_url).await, before);

    // The sink starts and writes a contact.
    let _sink = Service::start("sink-dataverse", &[], &process_env, listen)
        .await
        .unwrap();
    let change = upsert("cus_provisioned", 1_760_000_000, "Grace");
    env.produce(&t.input, std::slice::from_ref(&change)).await;
    let row = wait_until("the contact to be written", DEADLINE, || async {
        let table = admin(&emulator_url, "/_admin/tables/contacts").await;
        table["value"].as_array()?.first().cloned()
    })
    .await
    .unwrap();
    assert_contact(&row, &change);
}
