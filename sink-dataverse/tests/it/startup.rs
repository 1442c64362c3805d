//! A configuration Dataverse or the token endpoint definitely refuses stops the sink at start-up
//! with a message naming the settings, before it consumes anything.

use common::config::Secret;
use sink_dataverse::SinkConfig;
use tokio_util::sync::CancellationToken;

use crate::support::dataverse_settings;

async fn start(config: SinkConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        sink_dataverse::run(config, listener, CancellationToken::new()),
    )
    .await
    .expect("start-up fails fast");
    format!("{:#}", result.expect_err("start-up refused"))
}

#[tokio::test]
async fn refused_credentials_and_columns_fail_at_start_up() {
    let emu = dataverse_emulator::spawn(dataverse_emulator::Config::default())
        .await
        .unwrap();
    let base = SinkConfig {
        dataverse: dataverse_settings(&emu),
        ..SinkConfig::default()
    };

    let mut wrong_secret = base.clone();
    wrong_secret.dataverse.client_secret = Secret::new("not-the-secret");
    let message = start(wrong_secret).await;
    assert!(message.contains("invalid_client"), "{message}");
    assert!(
        !message.contains("not-the-secret"),
        "secrets never appear: {message}"
    );

    let mut wrong_column = base.clone();
    wrong_column.mapping.phone = "new_nosuchcolumn".into();
    let message = start(wrong_column).await;
    assert!(
        message.contains("mapping.phone")
            && message.contains("new_nosuchcolumn")
            && message.contains("sink-dataverse provision"),
        "{message}"
    );

    let mut wrong_table = base;
    wrong_table.dataverse.table = "contactz".into();
    let message = start(wrong_table).await;
    assert!(
        message.contains("dataverse.table") && message.contains("contactz"),
        "{message}"
    );
}

#[tokio::test]
async fn a_shutdown_during_start_up_ends_it_promptly() {
    // Dataverse hangs: the start-up check waits on it.
    let emu = dataverse_emulator::spawn(dataverse_emulator::Config {
        faults: dataverse_emulator::FaultConfig {
            added_latency_ms: 60_000,
            ..Default::default()
        },
        ..dataverse_emulator::Config::default()
    })
    .await
    .unwrap();
    let admin = crate::support::Admin::of(&emu);
    let config = SinkConfig {
        dataverse: dataverse_settings(&emu),
        request_timeout: common::config::HumanDuration::secs(60),
        ..SinkConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(sink_dataverse::run(config, listener, shutdown.clone()));
    harness::wait_until(
        "the start-up check in flight",
        crate::support::DEADLINE,
        || async { (admin.stats().await["in_flight"].as_u64() >= Some(1)).then_some(()) },
    )
    .await
    .unwrap();
    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(10), run)
        .await
        .expect("shutdown ends start-up promptly")
        .unwrap()
        .unwrap();
}
