//! `$batch`: change sets (atomic, `Content-ID` references), stop-at-first-failure versus
//! `odata.continue-on-error`, the 1000-operation limit, and malformed bodies.

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::support::{Env, Part, contact_key, header, odata_error, parse_batch};

/// One `application/http` part.
fn op(method: &str, url: &str, content_id: Option<&str>, body: Option<Value>) -> String {
    let id = content_id
        .map(|id| format!("Content-ID: {id}\r\n"))
        .unwrap_or_default();
    let (content_type, body) = match body {
        Some(b) => (
            "Content-Type: application/json; type=entry\r\n",
            format!("{b}\r\n"),
        ),
        None => ("", String::new()),
    };
    format!(
        "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n{id}\r\n{method} {url} HTTP/1.1\r\n{content_type}\r\n{body}"
    )
}

fn change_set(boundary: &str, ops: &[String]) -> String {
    let mut out = format!("Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n");
    for op in ops {
        out.push_str(&format!("--{boundary}\r\n{op}"));
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out
}

fn batch(boundary: &str, items: &[String]) -> String {
    let mut out = String::new();
    for item in items {
        out.push_str(&format!("--{boundary}\r\n{item}"));
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out
}

async fn send(env: &Env, body: String, continue_on_error: bool) -> Response {
    let mut request = env
        .request(reqwest::Method::POST, "$batch")
        .header("Content-Type", "multipart/mixed; boundary=\"batch_test\"")
        .header("If-None-Match", "null");
    if continue_on_error {
        request = request.header("Prefer", "odata.continue-on-error");
    }
    request.body(body).send().await.expect("batch")
}

async fn read_parts(response: Response) -> Vec<Part> {
    let content_type = header(&response, "content-type");
    assert!(
        content_type.starts_with("multipart/mixed; boundary=batchresponse_"),
        "{content_type}"
    );
    assert_eq!(header(&response, "odata-version"), "4.0");
    let body = response.text().await.expect("body");
    parse_batch(&content_type, &body)
}

#[tokio::test]
async fn documented_change_set_with_a_content_id_reference_and_a_query() {
    let env = Env::default().await;
    // From "Reference URI in request URL" in Microsoft's batch documentation, plus a GET outside the
    // change set as in its first change set example.
    let documented = "--batch_AAA123
Content-Type: multipart/mixed; boundary=changeset_dd81ccab-11ce-4d57-b91d-12c4e25c3cab

--changeset_dd81ccab-11ce-4d57-b91d-12c4e25c3cab
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 1

POST [Organization URI]/api/data/v9.2/contacts HTTP/1.1
Content-Type: application/json

{
  \"firstname\":\"First Name\",
  \"lastname\":\"Last name\"
}

--changeset_dd81ccab-11ce-4d57-b91d-12c4e25c3cab
Content-Transfer-Encoding: binary
Content-Type: application/http
Content-ID: 2

PUT $1/lastname HTTP/1.1
Content-Type: application/json

{
  \"value\":\"BBBBB\"
}

--changeset_dd81ccab-11ce-4d57-b91d-12c4e25c3cab--
--batch_AAA123
Content-Type: application/http
Content-Transfer-Encoding: binary

GET /api/data/v9.2/contacts?$select=fullname HTTP/1.1


--batch_AAA123--
"
    .replace("[Organization URI]", &env.emulator.url())
    .replace('\n', "\r\n");
    let response = env
        .request(reqwest::Method::POST, "$batch")
        .header("Content-Type", "multipart/mixed;boundary=batch_AAA123")
        .body(documented)
        .send()
        .await
        .expect("batch");
    assert_eq!(response.status(), StatusCode::OK);
    let parts = read_parts(response).await;
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert!(parts[0].in_change_set && parts[1].in_change_set && !parts[2].in_change_set);
    assert_eq!(
        (parts[0].status, parts[0].content_id.as_deref()),
        (204, Some("1"))
    );
    assert_eq!(
        (parts[1].status, parts[1].content_id.as_deref()),
        (204, Some("2"))
    );
    let entity_id = parts[0].header("OData-EntityId").expect("OData-EntityId");
    assert!(entity_id.starts_with(&env.api("contacts(")), "{entity_id}");
    assert_eq!(parts[0].header("Location"), Some(entity_id));
    assert_eq!(parts[0].header("OData-Version"), Some("4.0"));
    assert_eq!(parts[2].status, 200);
    let listed = parts[2].json();
    assert_eq!(
        listed["value"][0]["fullname"], "First Name BBBBB",
        "the change set was applied before the GET"
    );
    let stats = env.stats().await;
    assert_eq!(stats["batches"]["requests"], 1);
    assert_eq!(stats["batches"]["operations"], 3);
    assert_eq!(stats["batches"]["change_sets_committed"], 1);
}

#[tokio::test]
async fn a_failing_change_set_rolls_back_entirely() {
    let env = Env::default().await;
    env.patch(&contact_key("cus_existing"), json!({"firstname": "Original"}))
        .await;
    let body = batch(
        "batch_test",
        &[change_set(
            "changeset_a",
            &[
                op(
                    "POST",
                    "contacts",
                    Some("1"),
                    Some(json!({"new_stripecustomerid": "cus_new_1"})),
                ),
                op(
                    "PATCH",
                    &contact_key("cus_existing"),
                    Some("2"),
                    Some(json!({"firstname": "Changed"})),
                ),
                op(
                    "PATCH",
                    &contact_key("cus_new_2"),
                    Some("3"),
                    Some(json!({"firstname": "New"})),
                ),
                op("DELETE", &contact_key("cus_existing"), Some("4"), None),
                op("POST", "contacts", Some("5"), Some(json!({"shoe_size": 44}))),
            ],
        )],
    );
    let response = send(&env, body, false).await;
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "the batch answers with the failing status"
    );
    let parts = read_parts(response).await;
    assert_eq!(
        parts.len(),
        1,
        "a failed change set answers with its one failure: {parts:?}"
    );
    assert_eq!(parts[0].status, 400);
    assert_eq!(parts[0].content_id.as_deref(), Some("5"));
    assert!(!parts[0].in_change_set);
    let error = parts[0].json();
    assert_eq!(error["error"]["code"], "0x80048d19");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("shoe_size"))
    );

    let rows = env.rows("contacts").await;
    assert_eq!(rows.len(), 1, "creates rolled back, delete undone: {rows:?}");
    assert_eq!(rows[0]["new_stripecustomerid"], "cus_existing");
    assert_eq!(rows[0]["firstname"], "Original", "update rolled back");
    let stats = env.stats().await;
    assert_eq!(stats["batches"]["change_sets_rolled_back"], 1);
    assert_eq!(stats["operations"]["created"], 1, "only the set-up row");
    assert_eq!(stats["operations"]["deleted"], 0);

    // With continue-on-error the next items still run, and the failed change set stays rolled back.
    let body = batch(
        "batch_test",
        &[
            change_set(
                "changeset_b",
                &[
                    op(
                        "POST",
                        "contacts",
                        Some("1"),
                        Some(json!({"new_stripecustomerid": "cus_b1"})),
                    ),
                    op(
                        "POST",
                        "contacts",
                        Some("2"),
                        Some(json!({"new_stripecustomerid": "cus_existing"})),
                    ),
                ],
            ),
            op(
                "POST",
                "contacts",
                None,
                Some(json!({"new_stripecustomerid": "cus_after"})),
            ),
        ],
    );
    let response = send(&env, body, true).await;
    assert_eq!(response.status(), StatusCode::OK);
    let parts = read_parts(response).await;
    assert_eq!(parts.iter().map(|p| p.status).collect::<Vec<_>>(), [412, 204]);
    assert_eq!(parts[0].json()["error"]["code"], "0x80060892");
    let customers: Vec<String> = env
        .rows("contacts")
        .await
        .iter()
        .map(|r| r["new_stripecustomerid"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        customers.contains(&"cus_after".to_owned()) && !customers.contains(&"cus_b1".to_owned()),
        "{customers:?}"
    );
}

#[tokio::test]
async fn stops_at_the_first_failure_unless_continue_on_error() {
    let env = Env::default().await;
    let items = |suffix: &str| {
        vec![
            op(
                "POST",
                "contacts",
                None,
                Some(json!({"new_stripecustomerid": format!("cus_1{suffix}")})),
            ),
            op("DELETE", &contact_key("cus_missing"), None, None),
            op(
                "POST",
                "/api/data/v9.2/contacts",
                None,
                Some(json!({"new_stripecustomerid": format!("cus_3{suffix}")})),
            ),
        ]
    };
    let response = send(&env, batch("batch_test", &items("a")), false).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(header(&response, "preference-applied").is_empty());
    let parts = read_parts(response).await;
    assert_eq!(
        parts.iter().map(|p| p.status).collect::<Vec<_>>(),
        [204, 404],
        "stopped after the failure"
    );
    let customers = |rows: Vec<Value>| -> Vec<String> {
        let mut c: Vec<String> = rows
            .iter()
            .map(|r| r["new_stripecustomerid"].as_str().unwrap_or("").to_owned())
            .collect();
        c.sort();
        c
    };
    assert_eq!(
        customers(env.rows("contacts").await),
        ["cus_1a"],
        "lone requests before the failure stay applied"
    );

    let response = send(&env, batch("batch_test", &items("b")), true).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "preference-applied"), "odata.continue-on-error");
    let parts = read_parts(response).await;
    assert_eq!(
        parts.iter().map(|p| p.status).collect::<Vec<_>>(),
        [204, 404, 204]
    );
    assert_eq!(parts[1].json()["error"]["code"], "0x80040217");
    assert_eq!(
        customers(env.rows("contacts").await),
        ["cus_1a", "cus_1b", "cus_3b"]
    );
}

#[tokio::test]
async fn at_most_1000_operations() {
    let env = Env::default().await;
    let get = op("GET", "contacts?$top=1", None, None);
    let response = send(&env, batch("batch_test", &vec![get.clone(); 1000]), false).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(read_parts(response).await.len(), 1000);

    let mut items = vec![get.clone(); 995];
    items.push(change_set(
        "changeset_x",
        &vec![op("DELETE", &contact_key("a"), None, None); 6],
    ));
    let (code, message) = odata_error(
        send(&env, batch("batch_test", &items), false).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(code, "0x80040203");
    assert!(message.contains("1001") && message.contains("1000"), "{message}");
}

#[tokio::test]
async fn content_id_references_must_exist_earlier_in_the_change_set() {
    let env = Env::default().await;
    let body = batch(
        "batch_test",
        &[change_set(
            "changeset_r",
            &[
                op("PATCH", "$1", Some("2"), Some(json!({"firstname": "x"}))),
                op("POST", "contacts", Some("1"), Some(json!({"firstname": "y"}))),
            ],
        )],
    );
    let response = send(&env, body, false).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let parts = read_parts(response).await;
    assert_eq!(
        parts[0].json()["error"]["message"],
        "Content-ID Reference: '$1' does not exist in the batch context."
    );
    assert!(env.rows("contacts").await.is_empty());
}

#[tokio::test]
async fn malformed_batch_bodies_get_a_400_with_a_clear_message() {
    let env = Env::default().await;
    let cases: Vec<(&str, String, &str)> = vec![
        ("application/json", "{}".into(), "multipart/mixed"),
        ("multipart/mixed", "--x\r\n".into(), "boundary"),
        (
            "multipart/mixed; boundary=batch_test",
            "--batch_test\r\nContent-Type: application/http\r\n\r\nGET contacts HTTP/1.1\r\n".into(),
            "closing delimiter",
        ),
        (
            "multipart/mixed; boundary=batch_test",
            "no delimiters at all".into(),
            "closing delimiter",
        ),
        (
            "multipart/mixed; boundary=batch_test",
            batch(
                "batch_test",
                &["Content-Type: application/http\r\n\r\nFETCH\r\n".into()],
            ),
            "request line",
        ),
        (
            "multipart/mixed; boundary=batch_test",
            batch(
                "batch_test",
                &["X-Nothing: here\r\n\r\nGET contacts HTTP/1.1\r\n".into()],
            ),
            "no Content-Type",
        ),
        (
            "multipart/mixed; boundary=batch_test",
            batch(
                "batch_test",
                &[change_set("cs", &[op("GET", "contacts", None, None)])],
            ),
            "GET requests are not allowed inside a change set",
        ),
        (
            "multipart/mixed; boundary=batch_test",
            batch(
                "batch_test",
                &[change_set(
                    "cs",
                    &[change_set(
                        "inner",
                        &[op("POST", "contacts", None, Some(json!({})))],
                    )],
                )],
            ),
            "nested",
        ),
    ];
    for (content_type, body, needle) in cases {
        let response = env
            .request(reqwest::Method::POST, "$batch")
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .expect("batch");
        let (code, message) = odata_error(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(code, "0x80040203");
        assert!(message.contains(needle), "{needle}: {message}");
    }
    assert!(env.rows("contacts").await.is_empty());
}
