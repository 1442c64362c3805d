//! The `source` field added to `StripeEvent` is a compatible change as the schema registry judges
//! it: the registry (the workspace's, enforcing Avro compatibility) accepts the new schema as the
//! next version of a subject that holds the earlier one.

use harness::{Registry, unique};
use schemas::{AvroRecord, StripeEvent};
use serde_json::{Value, json};

const STRIPE_EVENT_V1: &str = include_str!("../../schemas/tests/stripe_event_v1.avsc");
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

async fn post(url: String, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", CONTENT_TYPE)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_registry_accepts_source_as_a_compatible_change() {
    let registry = Registry::start().await.unwrap();
    let subject = format!("{}-value", unique("stripe.events"));
    let base = registry.url();
    let (status, body) = post(
        format!("{base}/subjects/{subject}/versions"),
        json!({"schema": STRIPE_EVENT_V1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The text the codec registers: the file as shipped (canonical form would drop the defaults).
    let new_schema = StripeEvent::SCHEMA_JSON;
    let (status, body) = post(
        format!("{base}/compatibility/subjects/{subject}/versions/latest"),
        json!({"schema": new_schema}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["is_compatible"], true, "{body}");
    let (status, body) = post(
        format!("{base}/subjects/{subject}/versions"),
        json!({"schema": new_schema}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // The check is real: a new required field without a default is refused.
    let mut breaking: Value = serde_json::from_str(STRIPE_EVENT_V1).unwrap();
    breaking["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "required_now", "type": "string"}));
    let (status, body) = post(
        format!("{base}/compatibility/subjects/{subject}/versions/latest"),
        json!({"schema": breaking.to_string()}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["is_compatible"], false, "{body}");
}
