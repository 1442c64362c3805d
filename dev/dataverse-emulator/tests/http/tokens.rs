//! The Entra ID token endpoint and bearer token checks.

use dataverse_emulator::Config;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{Env, eventually, odata_error};

#[tokio::test]
async fn token_endpoint_answers_in_the_entra_shape_for_any_tenant() {
    let env = Env::default().await;
    for tenant in [
        "common",
        "00000000-0000-0000-0000-0000000000aa",
        "contoso.onmicrosoft.com",
    ] {
        let response = env
            .http
            .post(env.emulator.token_url(tenant))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "sink-dataverse"),
                ("client_secret", "local-secret"),
                ("scope", "https://contoso.crm.dynamics.com/.default"),
            ])
            .send()
            .await
            .expect("token");
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        let token = body["access_token"].as_str().expect("token");
        assert_eq!(token.split('.').count(), 3, "JWT-shaped");
        let response = env
            .request_as(token, Method::GET, "WhoAmI")
            .send()
            .await
            .expect("WhoAmI");
        assert_eq!(response.status(), StatusCode::OK, "a fresh token works");
    }
}

#[tokio::test]
async fn token_endpoint_refuses_bad_credentials_like_entra() {
    let env = Env::default().await;
    let cases = [
        (
            "sink-dataverse",
            "wrong",
            "x/.default",
            "client_credentials",
            401,
            "invalid_client",
            "AADSTS7000215",
        ),
        (
            "nobody",
            "local-secret",
            "x/.default",
            "client_credentials",
            400,
            "unauthorized_client",
            "AADSTS700016",
        ),
        (
            "sink-dataverse",
            "local-secret",
            "https://x.crm.dynamics.com",
            "client_credentials",
            400,
            "invalid_scope",
            "AADSTS1002012",
        ),
        (
            "sink-dataverse",
            "local-secret",
            "x/.default",
            "password",
            400,
            "unsupported_grant_type",
            "AADSTS70003",
        ),
    ];
    for (id, secret, scope, grant, status, error, aadsts) in cases {
        let response = env
            .http
            .post(env.emulator.token_url("tenant"))
            .form(&[
                ("grant_type", grant),
                ("client_id", id),
                ("client_secret", secret),
                ("scope", scope),
            ])
            .send()
            .await
            .expect("token request");
        assert_eq!(response.status().as_u16(), status, "{error}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], error);
        let description = body["error_description"].as_str().expect("description");
        assert!(description.starts_with(aadsts), "{description}");
        assert!(
            !description.contains("local-secret") && !description.contains("wrong"),
            "secrets are never echoed"
        );
    }
    let stats = env.stats().await;
    assert_eq!(stats["tokens_refused"], 4);
}

#[tokio::test]
async fn missing_wrong_and_expired_tokens_get_401_in_the_odata_shape() {
    let config = Config {
        token_lifetime_secs: 1,
        ..Config::default()
    };
    let env = Env::start(config).await;

    let response = env.http.get(env.api("contacts")).send().await.expect("no token");
    assert!(!crate::support::header(&response, "www-authenticate").is_empty());
    let (code, message) = odata_error(response, StatusCode::UNAUTHORIZED).await;
    assert_eq!(code, "0x8005f101");
    assert!(message.contains("Authorization"), "{message}");

    let response = env
        .request_as("not-a-token", Method::GET, "contacts")
        .send()
        .await
        .expect("wrong");
    let (_, message) = odata_error(response, StatusCode::UNAUTHORIZED).await;
    assert!(message.contains("invalid"), "{message}");

    // The token lives one second: it works now and is refused once it has expired.
    let fresh = env.fetch_token("sink-dataverse", "local-secret").await;
    let message = eventually("the token to expire", || {
        let request = env.request_as(&fresh, Method::GET, "contacts");
        async move {
            let response = request.send().await.expect("request");
            if response.status() == StatusCode::UNAUTHORIZED {
                Some(odata_error(response, StatusCode::UNAUTHORIZED).await.1)
            } else {
                assert_eq!(response.status(), StatusCode::OK);
                None
            }
        }
    })
    .await;
    assert!(message.contains("expired"), "{message}");
    let renewed = env.fetch_token("sink-dataverse", "local-secret").await;
    let response = env
        .request_as(&renewed, Method::GET, "contacts")
        .send()
        .await
        .expect("renewed");
    assert_eq!(response.status(), StatusCode::OK, "a new token works again");
}

#[tokio::test]
async fn admin_can_expire_every_token() {
    let env = Env::default().await;
    assert_eq!(env.get("contacts").await.status(), StatusCode::OK);
    let response = env.admin_post("tokens/expire", Value::Null).await;
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["expired"], 1);
    let (_, message) = odata_error(env.get("contacts").await, StatusCode::UNAUTHORIZED).await;
    assert!(message.contains("expired"), "{message}");
}
