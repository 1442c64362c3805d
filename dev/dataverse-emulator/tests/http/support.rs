//! Helpers: an emulator on 127.0.0.1:0 with a client and a token, condition waits with deadlines, and
//! an independent reader of multipart batch answers, and the tables of Microsoft's documented examples.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use dataverse_emulator::{
    AlternateKeyConfig, ColumnConfig, ColumnType, Config, Running, Secret, TableConfig,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

pub const CLIENT_ID: &str = "sink-dataverse";
pub const CLIENT_SECRET: &str = "local-secret";

/// A running emulator, an HTTP client and a valid token.
pub struct Env {
    pub emulator: Running,
    pub http: reqwest::Client,
    pub token: String,
}

impl Env {
    pub async fn start(config: Config) -> Env {
        let emulator = dataverse_emulator::spawn(config).await.expect("emulator starts");
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let mut env = Env {
            emulator,
            http,
            token: String::new(),
        };
        env.token = env.fetch_token(CLIENT_ID, CLIENT_SECRET).await;
        env
    }

    pub async fn default() -> Env {
        Env::start(Config::default()).await
    }

    pub async fn fetch_token(&self, id: &str, secret: &str) -> String {
        let response = self
            .http
            .post(self.emulator.token_url("contoso.onmicrosoft.com"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", secret),
                ("scope", &format!("{}/.default", self.emulator.url())),
            ])
            .send()
            .await
            .expect("token request");
        assert_eq!(response.status(), StatusCode::OK, "token for {id}");
        let body: Value = response.json().await.expect("token json");
        body["access_token"].as_str().expect("access_token").to_owned()
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}{path}", self.emulator.api_url())
    }

    /// A Web API request with the headers Microsoft's samples send and the token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.request_as(&self.token, method, path)
    }

    pub fn request_as(&self, token: &str, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.api(path))
            .bearer_auth(token)
            .header("Accept", "application/json")
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.expect("GET")
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.request(Method::POST, path)
            .json(&body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn patch(&self, path: &str, body: Value) -> Response {
        self.request(Method::PATCH, path)
            .json(&body)
            .send()
            .await
            .expect("PATCH")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.request(Method::DELETE, path).send().await.expect("DELETE")
    }

    pub async fn admin_get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/_admin/{path}", self.emulator.url()))
            .send()
            .await
            .expect("admin GET");
        assert_eq!(response.status(), StatusCode::OK, "admin {path}");
        response.json().await.expect("admin json")
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> Response {
        self.http
            .post(format!("{}/_admin/{path}", self.emulator.url()))
            .json(&body)
            .send()
            .await
            .expect("admin POST")
    }

    pub async fn set_faults(&self, faults: Value) {
        let response = self.admin_post("faults", faults).await;
        assert_eq!(response.status(), StatusCode::OK, "faults accepted");
    }

    pub async fn stats(&self) -> Value {
        self.admin_get("stats").await
    }

    pub async fn rows(&self, set: &str) -> Vec<Value> {
        let dump = self.admin_get(&format!("tables/{set}")).await;
        dump["value"].as_array().cloned().unwrap_or_default()
    }
}

/// Default configuration with an extra client.
pub fn config_with_second_client() -> Config {
    let mut config = Config::default();
    config
        .clients
        .insert("other-client".into(), Secret::new("other-secret"));
    config
}

/// Waits for `check` to return `Some`, polling until a deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts the OData error shape and returns (code, message).
pub async fn odata_error(response: Response, status: StatusCode) -> (String, String) {
    assert_eq!(response.status(), status, "status");
    let content_type = header(&response, "content-type");
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type}"
    );
    let body: Value = response.json().await.expect("error body is JSON");
    let error = body
        .get("error")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("no error object: {body}"));
    assert_eq!(error.len(), 2, "exactly code and message: {body}");
    let code = error["code"].as_str().expect("code").to_owned();
    let message = error["message"].as_str().expect("message").to_owned();
    assert!(code.starts_with("0x"), "code {code}");
    assert!(!message.is_empty());
    (code, message)
}

pub fn header(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

pub fn retry_after(response: &Response) -> u64 {
    header(response, "retry-after")
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After missing: {response:?}"))
}

/// One answer of a batch, read from the multipart body.
#[derive(Debug, Clone)]
pub struct Part {
    pub content_id: Option<String>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Set for the members of a change set answer.
    pub in_change_set: bool,
}

impl Part {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("part body is not JSON ({e}): {}", self.body))
    }
}

fn boundary_of(content_type: &str) -> Option<String> {
    content_type
        .split(';')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
}

/// Reads a batch answer: every part in order, change set members flattened and marked.
pub fn parse_batch(content_type: &str, body: &str) -> Vec<Part> {
    let boundary = boundary_of(content_type).expect("answer has a boundary");
    assert!(boundary.starts_with("batchresponse_"), "{boundary}");
    assert!(
        body.trim_end().ends_with(&format!("--{boundary}--")),
        "closing delimiter: {body}"
    );
    let mut parts = Vec::new();
    for chunk in body.split(&format!("--{boundary}")).skip(1) {
        if chunk.starts_with("--") {
            break;
        }
        let (head, rest) = chunk
            .trim_start_matches("\r\n")
            .split_once("\r\n\r\n")
            .expect("part headers");
        let inner_type = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Type: "))
            .unwrap_or("");
        if let Some(changeset) = inner_type.strip_prefix("multipart/mixed; boundary=") {
            assert!(changeset.starts_with("changesetresponse_"), "{changeset}");
            for member in rest.split(&format!("--{changeset}")).skip(1) {
                if member.starts_with("--") {
                    break;
                }
                parts.push(read_http_part(member, true));
            }
        } else {
            parts.push(read_http_part(chunk, false));
        }
    }
    parts
}

fn read_http_part(chunk: &str, in_change_set: bool) -> Part {
    let chunk = chunk.trim_start_matches("\r\n");
    let (head, http) = chunk.split_once("\r\n\r\n").expect("part head");
    assert!(head.contains("Content-Type: application/http"), "{head}");
    assert!(head.contains("Content-Transfer-Encoding: binary"), "{head}");
    let content_id = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-ID: "))
        .map(str::to_owned);
    let (response_head, body) = http.split_once("\r\n\r\n").unwrap_or((http, ""));
    let mut lines = response_head.lines();
    let status_line = lines.next().expect("status line");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line}"));
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    Part {
        content_id,
        status,
        headers,
        body: body.trim_end().to_owned(),
        in_change_set,
    }
}

/// Sends a request written the way Microsoft's documentation prints it (request line, headers, blank
/// line, body), with `[Organization URI]` standing for the emulator's environment URL.
pub async fn send_documented(env: &Env, text: &str) -> Response {
    let text = text
        .replace("[Organization URI]", &env.emulator.url())
        .replace("[Organization Uri]", &env.emulator.url());
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let request_line = lines.next().expect("request line");
    let mut words = request_line.split_whitespace();
    let method = Method::from_bytes(words.next().expect("method").as_bytes()).expect("method");
    let url = words.next().expect("url");
    assert_eq!(words.next(), Some("HTTP/1.1"));
    let mut request = env.http.request(method, url).bearer_auth(&env.token);
    for line in lines {
        let (name, value) = line.split_once(':').expect("header line");
        request = request.header(name.trim(), value.trim());
    }
    if !body.trim().is_empty() {
        request = request.body(body.to_owned());
    }
    request.send().await.expect("documented request")
}

pub fn contact_key(customer: &str) -> String {
    format!("contacts(new_stripecustomerid='{customer}')")
}

pub fn contact(first: &str, last: &str) -> Value {
    json!({"firstname": first, "lastname": last})
}

/// The default tables plus the ones Microsoft's documented examples use: `accounts`, `example_records`
/// (alternate key of two whole numbers) and `sample_examples` (alternate key `sample_keyattribute`).
pub fn documented_tables() -> Config {
    let mut config = Config::default();
    let mut accounts = BTreeMap::new();
    accounts.insert(
        "name".to_owned(),
        ColumnConfig::new(ColumnType::String).max_length(160),
    );
    accounts.insert(
        "accountnumber".to_owned(),
        ColumnConfig::new(ColumnType::String).max_length(20),
    );
    accounts.insert("creditonhold".to_owned(), ColumnConfig::new(ColumnType::Boolean));
    accounts.insert(
        "address1_latitude".to_owned(),
        ColumnConfig::new(ColumnType::Decimal),
    );
    accounts.insert("description".to_owned(), ColumnConfig::new(ColumnType::Memo));
    accounts.insert("revenue".to_owned(), ColumnConfig::new(ColumnType::Decimal));
    accounts.insert(
        "numberofemployees".to_owned(),
        ColumnConfig::new(ColumnType::Integer),
    );
    accounts.insert(
        "accountcategorycode".to_owned(),
        ColumnConfig::new(ColumnType::Choice).options(&[1, 2]),
    );
    config.tables.push(TableConfig {
        entity_set: "accounts".into(),
        logical_name: "account".into(),
        primary_key: "accountid".into(),
        columns: accounts,
        alternate_keys: vec![],
        computed: BTreeMap::new(),
    });
    let mut records = BTreeMap::new();
    records.insert("example_key1".to_owned(), ColumnConfig::new(ColumnType::Integer));
    records.insert("example_key2".to_owned(), ColumnConfig::new(ColumnType::Integer));
    records.insert("example_name".to_owned(), ColumnConfig::new(ColumnType::String));
    config.tables.push(TableConfig {
        entity_set: "example_records".into(),
        logical_name: "example_record".into(),
        primary_key: "example_recordid".into(),
        columns: records,
        alternate_keys: vec![AlternateKeyConfig {
            name: "example_key".into(),
            columns: vec!["example_key1".into(), "example_key2".into()],
        }],
        computed: BTreeMap::new(),
    });
    let mut samples = BTreeMap::new();
    samples.insert("sample_name".to_owned(), ColumnConfig::new(ColumnType::String));
    samples.insert(
        "sample_keyattribute".to_owned(),
        ColumnConfig::new(ColumnType::String),
    );
    config.tables.push(TableConfig {
        entity_set: "sample_examples".into(),
        logical_name: "sample_example".into(),
        primary_key: "sample_exampleid".into(),
        columns: samples,
        alternate_keys: vec![AlternateKeyConfig {
            name: "sample_keyattribute_key".into(),
            columns: vec!["sample_keyattribute".into()],
        }],
        computed: BTreeMap::new(),
    });
    config
}
