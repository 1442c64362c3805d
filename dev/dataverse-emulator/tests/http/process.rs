//! Persistence across a restart, and the binary as a user starts it.

use std::process::Stdio;
use std::time::Duration;

use dataverse_emulator::Config;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{Env, contact, contact_key, header};

fn etag_number(row: &Value) -> u64 {
    row["@odata.etag"]
        .as_str()
        .and_then(|e| e.trim_start_matches("W/\"").trim_end_matches('"').parse().ok())
        .expect("etag")
}

#[tokio::test]
async fn rows_and_tokens_survive_a_restart_with_persistence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        persist_path: Some(dir.path().join("dataverse.json")),
        ..Config::default()
    };

    let env = Env::start(config.clone()).await;
    env.patch(&contact_key("cus_kept"), contact("Ada", "Lovelace"))
        .await;
    env.patch(&contact_key("cus_gone"), contact("Temp", "Row")).await;
    env.delete(&contact_key("cus_gone")).await;
    let before: Value = env
        .get(&contact_key("cus_kept"))
        .await
        .json()
        .await
        .expect("json");
    let token = env.token.clone();
    env.emulator.stop().await.expect("graceful stop");

    let restarted = dataverse_emulator::spawn(config).await.expect("restart");
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", restarted.api_url());
    let response = http
        .get(url(&contact_key("cus_kept")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK, "the old token is still valid");
    let mut after: Value = response.json().await.expect("json");
    let mut before_row = before.clone();
    for row in [&mut after, &mut before_row] {
        row.as_object_mut().expect("object").remove("@odata.context");
    }
    assert_eq!(after, before_row, "same row, same etag");
    let response = http
        .get(url(&contact_key("cus_gone")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "the delete persisted too"
    );

    let response = http
        .patch(url(&contact_key("cus_kept")))
        .bearer_auth(&token)
        .json(&json!({"lastname": "King"}))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let updated: Value = http
        .get(url(&contact_key("cus_kept")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert!(
        etag_number(&updated) > etag_number(&before),
        "row versions keep increasing across restarts"
    );
    restarted.stop().await.expect("stop");
}

#[tokio::test]
async fn a_corrupt_snapshot_stops_start_up_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dataverse.json");
    std::fs::write(&path, "{not json").expect("write");
    let config = Config {
        persist_path: Some(path),
        ..Config::default()
    };
    let error = dataverse_emulator::spawn(config)
        .await
        .expect_err("refuses to start");
    assert!(error.to_string().contains("not a valid snapshot"), "{error}");
}

#[tokio::test]
async fn binary_prints_its_address_serves_and_stops_on_sigterm() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dataverse-emulator"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--client-id",
            "app",
            "--client-secret",
            "pw",
            "--token-lifetime-secs",
            "120",
        ])
        .env_remove("DATAVERSE_EMULATOR_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("prints in time")
        .expect("reads")
        .expect("a line");
    let url = line
        .strip_prefix("dataverse-emulator listening on ")
        .expect("the documented line");
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");

    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{url}/tenant-id/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", "pw"),
            ("scope", &format!("{url}/.default")),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    assert_eq!(token["expires_in"], 120);
    let response = http
        .request(
            Method::PATCH,
            format!("{url}/api/data/v9.2/{}", contact_key("cus_bin")),
        )
        .bearer_auth(token["access_token"].as_str().expect("token"))
        .json(&contact("Bin", "Ary"))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(header(&response, "odata-entityid").starts_with(url));

    let pid = child.id().expect("pid").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits in time")
        .expect("status");
    assert!(status.success(), "graceful exit: {status:?}");
}

#[tokio::test]
async fn binary_refuses_an_invalid_setting_and_names_it() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dataverse-emulator"))
        .args(["--listen", "127.0.0.1:0", "--max-concurrent", "0"])
        .output()
        .await
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("limits.max_concurrent"), "{stderr}");
}
