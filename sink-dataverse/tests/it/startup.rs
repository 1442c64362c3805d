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
        message.contains("mapping.*") && message.contains("new_nosuchcolumn"),
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
