//! End-to-end tests over real HTTP on 127.0.0.1 (ephemeral ports).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use schema_registry::{Compatibility, Config, RunningRegistry};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const SR_JSON: &str = "application/vnd.schemaregistry.v1+json";

const USER_V1: &str =
    r#"{"type":"record","name":"User","namespace":"com.example","fields":[{"name":"id","type":"long"}]}"#;
const USER_WITH_DEFAULT: &str = r#"{"type":"record","name":"User","namespace":"com.example","fields":[{"name":"id","type":"long"},{"name":"email","type":"string","default":""}]}"#;
const USER_WITHOUT_DEFAULT: &str = r#"{"type":"record","name":"User","namespace":"com.example","fields":[{"name":"id","type":"long"},{"name":"email","type":"string"}]}"#;

struct Client {
    base: String,
    http: reqwest::Client,
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Value,
}

impl Client {
    fn new(base: String) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Client { base, http }
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Result<Reply, reqwest::Error> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, SR_JSON)
                .body(body.to_string());
        }
        let resp = req.send().await?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Reply {
            status,
            content_type,
            body,
        })
    }

    async fn get(&self, path: &str) -> Result<Reply, reqwest::Error> {
        self.send(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Reply, reqwest::Error> {
        self.send(Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> Result<Reply, reqwest::Error> {
        self.send(Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Result<Reply, reqwest::Error> {
        self.send(Method::DELETE, path, None).await
    }

    /// Register and return the id, asserting 200.
    async fn register(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        let r = self
            .post(
                &format!("/subjects/{subject}/versions"),
                json!({ "schema": schema }),
            )
            .await?;
        assert_eq!(r.status, StatusCode::OK, "register {subject}: {}", r.body);
        r.body["id"]
            .as_u64()
            .ok_or_else(|| format!("no id in {}", r.body).into())
    }
}

async fn start(
    config: Config,
) -> Result<(RunningRegistry, Client), Box<dyn std::error::Error + Send + Sync>> {
    let running = schema_registry::spawn(config).await?;
    let client = Client::new(running.url());
    Ok((running, client))
}

fn assert_error(reply: &Reply, status: u16, code: u64) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.body);
    assert_eq!(reply.body["error_code"].as_u64(), Some(code), "{}", reply.body);
    assert!(reply.body["message"].is_string(), "{}", reply.body);
    assert_eq!(reply.content_type, SR_JSON);
}

#[tokio::test]
async fn register_lookup_fetch_and_errors() -> TestResult {
    let (running, c) = start(Config::default()).await?;

    // Health probes.
    let r = c.get("/").await?;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({}));
    assert_eq!(r.content_type, SR_JSON);
    assert_eq!(c.get("/healthz").await?.status, StatusCode::OK);

    // Register; the same schema again, here and under another subject, keeps its id.
    let id = c.register("users-value", USER_V1).await?;
    assert_eq!(id, 1);
    assert_eq!(c.register("users-value", USER_V1).await?, id);
    let pretty = serde_json::to_string_pretty(&serde_json::from_str::<Value>(USER_V1)?)?;
    assert_eq!(c.register("users-value", &pretty).await?, id);
    assert_eq!(c.register("other-value", USER_V1).await?, id);
    assert_eq!(c.get("/subjects/users-value/versions").await?.body, json!([1]));

    // Lookup.
    let r = c
        .post("/subjects/users-value", json!({ "schema": USER_V1 }))
        .await?;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["subject"], "users-value");
    assert_eq!(r.body["id"], 1);
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["schema"], USER_V1);
    assert!(r.body.get("schemaType").is_none());

    // By id.
    let r = c.get("/schemas/ids/1").await?;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({ "schema": USER_V1 }));
    let r = c.get("/schemas/ids/1?deleted=true").await?;
    assert_eq!(r.body, json!({ "schema": USER_V1 }));
    let r = c.get("/schemas/ids/1/versions").await?;
    assert_eq!(
        r.body,
        json!([{"subject":"other-value","version":1},{"subject":"users-value","version":1}])
    );
    let r = c.get("/schemas/ids/1/subjects").await?;
    assert_eq!(r.body, json!(["other-value", "users-value"]));

    // A second version.
    let id2 = c.register("users-value", USER_WITH_DEFAULT).await?;
    assert_eq!(id2, 2);
    assert_eq!(
        c.get("/subjects").await?.body,
        json!(["other-value", "users-value"])
    );
    assert_eq!(c.get("/subjects/users-value/versions").await?.body, json!([1, 2]));
    for latest in ["latest", "-1", "2"] {
        let r = c.get(&format!("/subjects/users-value/versions/{latest}")).await?;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.body,
            json!({"subject":"users-value","version":2,"id":2,"schema":USER_WITH_DEFAULT})
        );
    }
    let r = c.get("/subjects/users-value/versions/1").await?;
    assert_eq!(r.body["id"], 1);
    let r = c.get("/subjects/users-value/versions/1/schema").await?;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, serde_json::from_str::<Value>(USER_V1)?);

    // Config.
    let r = c.get("/config").await?;
    assert_eq!(r.body, json!({"compatibilityLevel":"BACKWARD"}));
    let r = c.put("/config", json!({"compatibility":"FULL"})).await?;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"compatibility":"FULL"}));
    assert_eq!(c.get("/config").await?.body, json!({"compatibilityLevel":"FULL"}));
    assert_error(&c.get("/config/users-value").await?, 404, 40408);
    let r = c.get("/config/users-value?defaultToGlobal=true").await?;
    assert_eq!(r.body, json!({"compatibilityLevel":"FULL"}));
    let r = c
        .put("/config/users-value", json!({"compatibility":"none"}))
        .await?;
    assert_eq!(r.body, json!({"compatibility":"NONE"}));
    assert_eq!(
        c.get("/config/users-value").await?.body,
        json!({"compatibilityLevel":"NONE"})
    );
    let r = c.delete("/config/users-value").await?;
    assert_eq!(r.body, json!({"compatibilityLevel":"NONE"}));
    assert_error(&c.get("/config/users-value").await?, 404, 40408);
    assert_error(
        &c.put("/config", json!({"compatibility":"SIDEWAYS"})).await?,
        422,
        42203,
    );
    assert_error(&c.put("/config/x", json!({"compatibility":7})).await?, 422, 422);
    assert_error(&c.put("/config/x", json!({})).await?, 422, 42203);

    // Not found.
    assert_error(&c.get("/subjects/nope/versions").await?, 404, 40401);
    assert_error(&c.get("/subjects/nope/versions/latest").await?, 404, 40401);
    assert_error(&c.get("/subjects/users-value/versions/9").await?, 404, 40402);
    assert_error(&c.get("/schemas/ids/99").await?, 404, 40403);
    assert_error(
        &c.post("/subjects/nope", json!({"schema": USER_V1})).await?,
        404,
        40401,
    );
    assert_error(
        &c.post("/subjects/users-value", json!({"schema": "\"int\""}))
            .await?,
        404,
        40403,
    );

    // Invalid input.
    assert_error(&c.get("/subjects/users-value/versions/zero").await?, 422, 42202);
    assert_error(&c.get("/subjects/users-value/versions/0").await?, 422, 42202);
    for bad in [
        json!({"schema": "{not json"}),
        json!({"schema": "\"nosuchtype\""}),
        json!({"schema": r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":"x"}]}"#}),
        json!({}),
        json!({"schema": USER_V1, "schemaType": "PROTOBUF"}),
        json!({"schema": USER_V1, "references": [{"name":"a","subject":"b","version":1}]}),
    ] {
        assert_error(&c.post("/subjects/bad/versions", bad).await?, 422, 42201);
    }
    let r = c
        .post(
            "/subjects/bad/versions",
            json!({"schema": USER_V1, "schemaType": "JSON"}),
        )
        .await?;
    assert!(
        r.body["message"].as_str().unwrap_or_default().contains("AVRO"),
        "{}",
        r.body
    );
    // Explicit AVRO and an empty reference list are fine.
    let r = c
        .post(
            "/subjects/explicit/versions",
            json!({"schema": USER_V1, "schemaType": "AVRO", "references": []}),
        )
        .await?;
    assert_eq!(r.body, json!({"id": 1}));
    assert_error(&c.get("/schemas/ids/abc").await?, 404, 404);
    assert_error(&c.get("/no/such/route").await?, 404, 404);
    let r = c.get("/no/such/route").await?;
    assert_eq!(r.body, json!({"error_code":404,"message":"HTTP 404 Not Found"}));
    assert_error(&c.send(Method::PATCH, "/subjects", None).await?, 405, 405);

    // Malformed bodies and content types.
    let raw = |ct: Option<&'static str>, body: &'static str| {
        let mut req = c
            .http
            .post(format!("{}/subjects/raw/versions", c.base))
            .body(body);
        if let Some(ct) = ct {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        req.send()
    };
    let r = raw(Some(SR_JSON), "{not json").await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r: Value = r.json().await?;
    assert_eq!(r["error_code"], 400);
    let r = raw(Some(SR_JSON), r#"{"schema": 5}"#).await?;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = raw(Some("text/plain"), r#"{"schema": "\"int\""}"#).await?;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    for ct in [
        None,
        Some("application/json"),
        Some("application/vnd.schemaregistry+json"),
        Some("application/vnd.schemaregistry.v1+json; charset=utf-8"),
    ] {
        let r = raw(ct, r#"{"schema": "\"int\"", "unknownField": true}"#).await?;
        assert_eq!(r.status(), StatusCode::OK, "{ct:?}");
    }

    running.stop().await?;
    Ok(())
}

#[tokio::test]
async fn deletes() -> TestResult {
    let (running, c) = start(Config {
        data_dir: None,
        default_compatibility: Compatibility::None,
    })
    .await?;
    c.register("d", r#""int""#).await?;
    c.register("d", r#""string""#).await?;
    c.register("d", r#""long""#).await?;

    // Soft-delete version 2.
    let r = c.delete("/subjects/d/versions/2").await?;
    assert_eq!(r.body, json!(2));
    assert_eq!(c.get("/subjects/d/versions").await?.body, json!([1, 3]));
    assert_eq!(
        c.get("/subjects/d/versions?deleted=true").await?.body,
        json!([1, 2, 3])
    );
    assert_error(&c.get("/subjects/d/versions/2").await?, 404, 40402);
    assert_eq!(c.get("/subjects/d/versions/2?deleted=true").await?.body["id"], 2);
    assert_error(&c.delete("/subjects/d/versions/2").await?, 404, 40406);
    // Schema ids stay readable.
    assert_eq!(c.get("/schemas/ids/2").await?.status, StatusCode::OK);
    // Permanent delete requires a soft delete first.
    assert_error(
        &c.delete("/subjects/d/versions/3?permanent=true").await?,
        404,
        40407,
    );
    assert_eq!(
        c.delete("/subjects/d/versions/2?permanent=true").await?.body,
        json!(2)
    );
    assert_eq!(
        c.get("/subjects/d/versions?deleted=true").await?.body,
        json!([1, 3])
    );

    // Subject delete.
    assert_error(&c.delete("/subjects/d?permanent=true").await?, 404, 40405);
    assert_eq!(c.delete("/subjects/d").await?.body, json!([1, 3]));
    assert_error(&c.delete("/subjects/d").await?, 404, 40404);
    assert_error(&c.get("/subjects/d/versions").await?, 404, 40401);
    assert_eq!(c.get("/subjects").await?.body, json!([]));
    assert_eq!(c.get("/subjects?deleted=true").await?.body, json!(["d"]));
    // Re-registering after a soft delete continues the version numbers, keeps the id.
    assert_eq!(c.register("d", r#""int""#).await?, 1);
    assert_eq!(c.get("/subjects/d/versions").await?.body, json!([4]));
    assert_error(&c.delete("/subjects/nope").await?, 404, 40401);

    running.stop().await?;
    Ok(())
}

#[tokio::test]
async fn compatibility_enforcement() -> TestResult {
    let (running, c) = start(Config::default()).await?;
    let subject = "compat-value";
    assert_eq!(c.register(subject, USER_V1).await?, 1);

    // The check endpoints.
    let check = |schema: &'static str, path: &'static str| c.post(path, json!({ "schema": schema }));
    let latest = "/compatibility/subjects/compat-value/versions/latest";
    let r = check(USER_WITH_DEFAULT, latest).await?;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"is_compatible": true}));
    let r = check(USER_WITHOUT_DEFAULT, latest).await?;
    assert_eq!(r.body, json!({"is_compatible": false}));
    let r = check(
        USER_WITHOUT_DEFAULT,
        "/compatibility/subjects/compat-value/versions/1?verbose=true",
    )
    .await?;
    assert_eq!(r.body["is_compatible"], false);
    let messages = r.body["messages"].as_array().cloned().unwrap_or_default();
    assert!(
        messages.iter().any(|m| m
            .as_str()
            .unwrap_or_default()
            .contains("READER_FIELD_MISSING_DEFAULT_VALUE")),
        "{}",
        r.body
    );
    let r = check(
        USER_WITH_DEFAULT,
        "/compatibility/subjects/compat-value/versions?verbose=true",
    )
    .await?;
    assert_eq!(r.body, json!({"is_compatible": true, "messages": []}));
    assert_error(
        &check(USER_V1, "/compatibility/subjects/nope/versions/latest").await?,
        404,
        40401,
    );
    assert_error(
        &check(USER_V1, "/compatibility/subjects/compat-value/versions/7").await?,
        404,
        40402,
    );
    assert_error(
        &check(USER_V1, "/compatibility/subjects/compat-value/versions/x").await?,
        422,
        42202,
    );
    let r = check(USER_V1, "/compatibility/subjects/brand-new/versions").await?;
    assert_eq!(r.body, json!({"is_compatible": true}));

    // BACKWARD: a field without a default is rejected with 409…
    let r = c
        .post(
            &format!("/subjects/{subject}/versions"),
            json!({ "schema": USER_WITHOUT_DEFAULT }),
        )
        .await?;
    assert_error(&r, 409, 409);
    let message = r.body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "Schema being registered is incompatible with an earlier schema for subject \"compat-value\", details: "
        ),
        "{message}"
    );
    assert!(message.contains("{compatibility: 'BACKWARD'}"), "{message}");
    assert_eq!(c.get("/subjects/compat-value/versions").await?.body, json!([1]));
    // …with a default it is accepted as a new version.
    assert_eq!(c.register(subject, USER_WITH_DEFAULT).await?, 2);
    assert_eq!(
        c.get("/subjects/compat-value/versions").await?.body,
        json!([1, 2])
    );

    // NONE: anything goes.
    c.put("/config/compat-value", json!({"compatibility": "NONE"}))
        .await?;
    assert_eq!(c.register(subject, r#""string""#).await?, 3);

    // FORWARD: removing a field the old schema needs is rejected, adding one is fine.
    let fwd = "forward-value";
    c.put("/config/forward-value", json!({"compatibility": "FORWARD"}))
        .await?;
    assert_eq!(c.register(fwd, USER_WITHOUT_DEFAULT).await?, 4);
    let r = c
        .post(&format!("/subjects/{fwd}/versions"), json!({ "schema": USER_V1 }))
        .await?;
    assert_error(&r, 409, 409);
    let r = c
        .post(
            "/compatibility/subjects/forward-value/versions/latest",
            json!({ "schema": USER_V1 }),
        )
        .await?;
    assert_eq!(r.body, json!({"is_compatible": false}));
    let more = r#"{"type":"record","name":"User","namespace":"com.example","fields":[{"name":"id","type":"long"},{"name":"email","type":"string"},{"name":"age","type":"int"}]}"#;
    assert_eq!(c.register(fwd, more).await?, 5);

    // A global change applies to subjects without their own level.
    c.put("/config", json!({"compatibility": "NONE"})).await?;
    let r = c
        .post(
            "/compatibility/subjects/forward-value/versions/latest",
            json!({ "schema": USER_V1 }),
        )
        .await?;
    assert_eq!(r.body, json!({"is_compatible": false}), "subject level wins");

    running.stop().await?;
    Ok(())
}

#[tokio::test]
async fn state_survives_a_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = Config {
        data_dir: Some(dir.path().join("nested").join("data")),
        default_compatibility: Compatibility::Backward,
    };

    // First run, through `run` with an explicit shutdown future.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port1 = listener.local_addr()?.port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(schema_registry::run(listener, config.clone(), async {
        let _ = stop_rx.await;
    }));
    let c = Client::new(format!("http://127.0.0.1:{port1}"));
    assert_eq!(c.register("a-value", USER_V1).await?, 1);
    assert_eq!(c.register("b-value", r#""string""#).await?, 2);
    assert_eq!(c.register("a-value", USER_WITH_DEFAULT).await?, 3);
    c.put("/config", json!({"compatibility": "FULL"})).await?;
    c.put("/config/b-value", json!({"compatibility": "NONE"})).await?;
    let _ = stop_tx.send(());
    server.await??;
    assert!(
        dir.path()
            .join("nested/data")
            .join(schema_registry::STATE_FILE)
            .is_file()
    );

    // Second run on another port, same directory.
    let (running, c) = start(config.clone()).await?;
    assert_ne!(running.addr().port(), port1);
    assert_eq!(c.get("/subjects").await?.body, json!(["a-value", "b-value"]));
    assert_eq!(c.get("/subjects/a-value/versions").await?.body, json!([1, 2]));
    let r = c.get("/subjects/a-value/versions/latest").await?;
    assert_eq!(r.body["id"], 3);
    assert_eq!(r.body["schema"], USER_WITH_DEFAULT);
    assert_eq!(
        c.get("/schemas/ids/2").await?.body,
        json!({"schema": "\"string\""})
    );
    assert_eq!(
        c.get("/config").await?.body,
        json!({"compatibilityLevel": "FULL"})
    );
    assert_eq!(
        c.get("/config/b-value").await?.body,
        json!({"compatibilityLevel": "NONE"})
    );
    // Same schema, same id; a new schema gets a fresh id.
    assert_eq!(c.register("a-value", USER_V1).await?, 1);
    assert_eq!(c.register("b-value", r#""long""#).await?, 4);
    // Dedup index is rebuilt: the old schema under a new subject keeps its id.
    assert_eq!(c.register("c-value", USER_WITH_DEFAULT).await?, 3);
    running.stop().await?;

    // A third run still agrees.
    let (running, c) = start(config).await?;
    assert_eq!(c.get("/subjects/b-value/versions").await?.body, json!([1, 2]));
    assert_eq!(c.register("d-value", r#""double""#).await?, 5);
    running.stop().await?;
    Ok(())
}

#[tokio::test]
async fn corrupt_state_file_fails_start_up() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join(schema_registry::STATE_FILE), b"{ not json")?;
    let config = Config {
        data_dir: Some(dir.path().to_path_buf()),
        default_compatibility: Compatibility::Backward,
    };
    assert!(schema_registry::spawn(config).await.is_err());
    Ok(())
}

#[tokio::test]
async fn works_with_schema_registry_converter() -> TestResult {
    use apache_avro::types::Value as Avro;
    use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
    use schema_registry_converter::async_impl::schema_registry::SrSettings;
    use schema_registry_converter::schema_registry_common::{
        SchemaType, SubjectNameStrategy, SuppliedSchema,
    };

    let (running, c) = start(Config::default()).await?;
    // Something else registered first, so the id is not trivially 1.
    c.register("unrelated-value", r#""string""#).await?;

    let schema = r#"{"type":"record","name":"Payment","namespace":"com.example","fields":[{"name":"id","type":"string"},{"name":"amount","type":"long"}]}"#;
    let settings = SrSettings::new_builder(running.url()).no_proxy().build()?;
    let encoder = AvroEncoder::new(settings.clone());
    let decoder = AvroDecoder::new(settings);
    let supplied = SuppliedSchema::new(
        Some("com.example.Payment".to_owned()),
        SchemaType::Avro,
        schema.to_owned(),
    );
    let fields = || {
        vec![
            ("id", Avro::String("pi_123".to_owned())),
            ("amount", Avro::Long(4200)),
        ]
    };
    let bytes = encoder
        .encode(
            fields(),
            SubjectNameStrategy::TopicNameStrategyWithSchema("t".into(), false, supplied),
        )
        .await?;
    assert_eq!(bytes[0], 0, "magic byte");
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    assert_eq!(id, 2);
    let r = c.get("/subjects/t-value/versions/latest").await?;
    assert_eq!(r.body["id"], 2);

    let decoded = decoder.decode(Some(&bytes)).await?;
    assert_eq!(
        decoded.value,
        Avro::Record(vec![
            ("id".to_owned(), Avro::String("pi_123".to_owned())),
            ("amount".to_owned(), Avro::Long(4200)),
        ])
    );

    // Encoding by topic name alone fetches the latest version of `t-value`.
    let fresh = AvroEncoder::new(SrSettings::new_builder(running.url()).no_proxy().build()?);
    let again = fresh
        .encode(
            fields(),
            SubjectNameStrategy::TopicNameStrategy("t".into(), false),
        )
        .await?;
    assert_eq!(again, bytes);

    // The converter's registry helpers.
    use schema_registry_converter::async_impl::schema_registry as sr;
    let settings = SrSettings::new_builder(running.url()).no_proxy().build()?;
    assert_eq!(
        sr::get_all_subjects(&settings).await?,
        vec!["t-value".to_owned(), "unrelated-value".to_owned()]
    );
    assert_eq!(
        sr::get_all_versions(&settings, "t-value".to_owned()).await?,
        vec![1]
    );
    let by_id = sr::get_schema_by_id(id, &settings).await?;
    assert_eq!(by_id.schema, schema);
    assert_eq!(by_id.schema_type, SchemaType::Avro);

    running.stop().await?;
    Ok(())
}

#[tokio::test]
async fn confluent_quickstart_curl_request() -> TestResult {
    let (running, _c) = start(Config::default()).await?;
    // curl -X POST -H "Content-Type: application/vnd.schemaregistry.v1+json" \
    //   --data '{"schema": "{\"type\": \"string\"}"}' \
    //   http://localhost:8081/subjects/Kafka-value/versions
    let http = reqwest::Client::builder().no_proxy().build()?;
    let resp = http
        .post(format!("{}/subjects/Kafka-value/versions", running.url()))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .body(r#"{"schema": "{\"type\": \"string\"}"}"#)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some(SR_JSON)
    );
    assert_eq!(resp.text().await?, r#"{"id":1}"#);
    running.stop().await?;
    Ok(())
}

#[tokio::test]
async fn binary_prints_address_and_stops_on_sigterm() -> TestResult {
    use tokio::io::AsyncBufReadExt as _;
    let dir = tempfile::tempdir()?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_schema-registry"))
        .args(["--listen", "127.0.0.1:0", "--compatibility", "full"])
        .env("SCHEMA_REGISTRY_DATA_DIR", dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await??
        .ok_or("no output")?;
    let url = line
        .strip_prefix("schema-registry listening on ")
        .ok_or_else(|| format!("unexpected line {line:?}"))?
        .to_owned();
    let c = Client::new(url);
    assert_eq!(c.get("/").await?.body, json!({}));
    assert_eq!(
        c.get("/config").await?.body,
        json!({"compatibilityLevel": "FULL"})
    );
    assert_eq!(c.register("bin-value", r#""int""#).await?, 1);

    let pid = child.id().ok_or("no pid")?;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(status.success(), "{status:?}");
    assert!(dir.path().join(schema_registry::STATE_FILE).is_file());
    Ok(())
}
