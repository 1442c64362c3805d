//! Creating columns and alternate keys through the metadata API, as Microsoft's "Create and update
//! column definitions using the Web API" page does it, on the bare contacts table: columns appear at
//! once, a key's index is built in the background (Pending → InProgress → Active), and upserts by the
//! key are refused until then.

use dataverse_emulator::{Config, KeyIndexConfig, TableConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Env, eventually, header, odata_error};

fn bare(pending_ms: u64, build_ms: u64) -> Config {
    Config {
        tables: vec![TableConfig::bare_contacts()],
        key_index: KeyIndexConfig { pending_ms, build_ms },
        ..Config::default()
    }
}

fn label(text: &str) -> Value {
    json!({"@odata.type": "Microsoft.Dynamics.CRM.Label", "LocalizedLabels": [{"@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text, "LanguageCode": 1033}]})
}

fn string_column(schema: &str, max: u64) -> Value {
    json!({
        "AttributeType": "String",
        "AttributeTypeName": {"Value": "StringType"},
        "DisplayName": label(schema),
        "RequiredLevel": {"Value": "None", "CanBeChanged": true, "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings"},
        "SchemaName": schema,
        "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
        "FormatName": {"Value": "Text"},
        "MaxLength": max
    })
}

const ATTRIBUTES: &str = "EntityDefinitions(LogicalName='contact')/Attributes";
const KEYS: &str = "EntityDefinitions(LogicalName='contact')/Keys";

#[tokio::test]
async fn columns_are_created_once_and_listed_with_their_type() {
    let env = Env::start(bare(0, 0)).await;
    let listed: Value = env
        .get(&format!("{ATTRIBUTES}?$select=LogicalName,AttributeType"))
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listed["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["LogicalName"].as_str())
        .collect();
    assert!(
        names.contains(&"firstname") && names.contains(&"contactid"),
        "{listed}"
    );
    assert!(!names.contains(&"new_stripecustomerid"), "bare: {listed}");

    let response = env
        .post(ATTRIBUTES, string_column("new_StripeCustomerId", 100))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let entity_id = header(&response, "odata-entityid");
    assert!(
        entity_id.starts_with(&format!(
            "{}/api/data/v9.2/EntityDefinitions(LogicalName='contact')/Attributes(",
            env.emulator.url()
        )),
        "{entity_id}"
    );
    let one: Value = env
        .get(&format!("{ATTRIBUTES}(LogicalName='new_stripecustomerid')"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["SchemaName"], "new_StripeCustomerId");
    assert_eq!(one["AttributeType"], "String");
    assert_eq!(one["MaxLength"], 100);
    assert_eq!(
        one["@odata.type"],
        "#Microsoft.Dynamics.CRM.StringAttributeMetadata"
    );
    assert!(
        entity_id.contains(one["MetadataId"].as_str().unwrap()),
        "{entity_id} {one}"
    );

    let again = env
        .post(ATTRIBUTES, string_column("new_StripeCustomerId", 100))
        .await;
    let (code, message) = odata_error(again, StatusCode::BAD_REQUEST).await;
    assert_eq!(code, "0x80047013");
    assert!(message.contains("already exists"), "{message}");

    let filtered: Value = env
        .get(&format!(
            "{ATTRIBUTES}?$select=LogicalName&$filter=LogicalName eq 'new_stripecustomerid'"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(filtered["value"].as_array().unwrap().len(), 1, "{filtered}");
    let missing = env.get(&format!("{ATTRIBUTES}(LogicalName='new_nope')")).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(env.stats().await["definitions_created"], 1);
}

#[tokio::test]
async fn a_key_builds_in_the_background_and_upserts_wait_for_it() {
    let env = Env::start(bare(300, 600)).await;
    let upsert = "contacts(new_stripecustomerid='cus_1')";
    let response = env.patch(upsert, json!({"firstname": "Ada"})).await;
    let (code, message) = odata_error(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(code, "0x80060888");
    assert!(
        message.starts_with(
            "The key in the request URI is not valid for resource 'Microsoft.Dynamics.CRM.contact'"
        ),
        "{message}"
    );

    let over_nothing = env
        .post(
            KEYS,
            json!({"SchemaName": "new_stripecustomerid_key", "DisplayName": label("Stripe customer"), "KeyAttributes": ["new_stripecustomerid"]}),
        )
        .await;
    let (_, message) = odata_error(over_nothing, StatusCode::BAD_REQUEST).await;
    assert!(
        message.contains("new_stripecustomerid") && message.contains("does not exist"),
        "{message}"
    );

    assert_eq!(
        env.post(ATTRIBUTES, string_column("new_stripecustomerid", 100))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let created = env
        .post(
            KEYS,
            json!({"@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata", "SchemaName": "new_stripecustomerid_key", "DisplayName": label("Stripe customer"), "KeyAttributes": ["new_stripecustomerid"]}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::NO_CONTENT);
    assert!(header(&created, "odata-entityid").contains("/Keys("));
    assert_eq!(key_status(&env).await, "Pending");
    // Still building: upserts by the key are refused as before.
    let response = env.patch(upsert, json!({"firstname": "Ada"})).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    eventually("the index job to run", || async {
        (key_status(&env).await == "InProgress").then_some(())
    })
    .await;
    eventually("the key to be active", || async {
        (key_status(&env).await == "Active").then_some(())
    })
    .await;
    assert_eq!(
        env.patch(upsert, json!({"firstname": "Ada"})).await.status(),
        StatusCode::NO_CONTENT
    );
    let row: Value = env.get(upsert).await.json().await.unwrap();
    assert_eq!(row["firstname"], "Ada");

    let twice = env
        .post(
            KEYS,
            json!({"SchemaName": "new_other_key", "DisplayName": label("Again"), "KeyAttributes": ["new_stripecustomerid"]}),
        )
        .await;
    assert_eq!(twice.status(), StatusCode::BAD_REQUEST);
}

async fn key_status(env: &Env) -> String {
    let body: Value = env
        .get(&format!(
            "{KEYS}?$select=SchemaName,KeyAttributes,EntityKeyIndexStatus"
        ))
        .await
        .json()
        .await
        .unwrap();
    body["value"][0]["EntityKeyIndexStatus"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_key_over_duplicate_values_fails_and_stays_unusable() {
    let env = Env::start(bare(0, 100)).await;
    env.post(ATTRIBUTES, string_column("new_code", 20)).await;
    for _ in 0..2 {
        let response = env.post("contacts", json!({"new_code": "same"})).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
    env.post(
        KEYS,
        json!({"SchemaName": "new_code_key", "DisplayName": label("Code"), "KeyAttributes": ["new_code"]}),
    )
    .await;
    eventually("the index job to fail", || async {
        let body: Value = env.get(KEYS).await.json().await.unwrap();
        (body["value"][0]["EntityKeyIndexStatus"] == "Failed").then_some(())
    })
    .await;
    let response = env.patch("contacts(new_code='same')", json!({})).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_default_contacts_table_lists_its_active_key_and_expands_in_one_read() {
    let env = Env::default().await;
    let body: Value = env
        .get("EntityDefinitions?$filter=EntitySetName eq 'contacts'&$select=LogicalName&$expand=Attributes($select=LogicalName,AttributeType),Keys($select=KeyAttributes,EntityKeyIndexStatus)")
        .await
        .json()
        .await
        .unwrap();
    let contact = &body["value"][0];
    assert_eq!(contact["LogicalName"], "contact", "{body}");
    assert_eq!(
        contact["Keys"][0]["KeyAttributes"],
        json!(["new_stripecustomerid"])
    );
    assert_eq!(contact["Keys"][0]["EntityKeyIndexStatus"], "Active");
    let created = contact["Attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["LogicalName"] == "new_stripeeventcreated")
        .expect("listed");
    assert_eq!(created["AttributeType"], "BigInt");
    assert!(
        created.get("SchemaName").is_none(),
        "only the selected: {created}"
    );
}
