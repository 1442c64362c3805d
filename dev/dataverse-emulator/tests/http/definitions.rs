//! Table definitions (`EntityDefinitions`), with the requests of Microsoft's "Query table definitions
//! using the Web API" page and the metadata reads Microsoft's clients send before any table operation.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Env, documented_tables, header, odata_error, send_documented};

#[tokio::test]
async fn a_table_definition_by_logical_name_answers_the_selected_properties_and_metadata_id() {
    let env = Env::start(documented_tables()).await;
    let response = send_documented(
        &env,
        r#"GET [Organization URI]/api/data/v9.2/EntityDefinitions(LogicalName='account')?$select=DisplayName,IsKnowledgeManagementEnabled,EntitySetName HTTP/1.1
Accept: application/json
OData-MaxVersion: 4.0
OData-Version: 4.0"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "content-type"),
        "application/json; odata.metadata=minimal"
    );
    assert_eq!(header(&response, "odata-version"), "4.0");
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["@odata.context"],
        format!(
            "{}/api/data/v9.2/$metadata#EntityDefinitions(DisplayName,IsKnowledgeManagementEnabled,EntitySetName)/$entity",
            env.emulator.url()
        )
    );
    assert_eq!(body["EntitySetName"], "accounts");
    assert_eq!(body["IsKnowledgeManagementEnabled"], false);
    assert_eq!(body["DisplayName"]["UserLocalizedLabel"]["Label"], "Account");
    assert_eq!(body["DisplayName"]["LocalizedLabels"][0]["LanguageCode"], 1033);
    assert_eq!(
        body["MetadataId"], "70816501-edb9-4740-a16c-6a5efbc05d84",
        "always returned, with the documented id of account"
    );
    assert_eq!(body.as_object().map(|o| o.len()), Some(5), "{body}");

    // The same read as Microsoft's clients send it for contacts.
    let response = env
        .get("EntityDefinitions(LogicalName='contact')?$select=LogicalCollectionName,PrimaryIdAttribute,LogicalName,DisplayName,PrimaryNameAttribute")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["LogicalCollectionName"], "contacts");
    assert_eq!(body["PrimaryIdAttribute"], "contactid");
    assert_eq!(body["LogicalName"], "contact");
    assert_eq!(body["PrimaryNameAttribute"], "fullname");

    // By MetadataId, the other key of a definition.
    let response = env
        .get("EntityDefinitions(608861bc-50a4-4c5f-a02c-21fe1943e2cf)?$select=EntitySetName")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["EntitySetName"], "contacts");
}

#[tokio::test]
async fn a_filtered_definitions_query_answers_an_odata_collection() {
    let env = Env::start(documented_tables()).await;
    let response = env
        .get("EntityDefinitions?$filter=LogicalName%20eq%20'contact'&$select=EntitySetName,PrimaryIdAttribute,LogicalCollectionName,PrimaryNameAttribute,LogicalName")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body,
        json!({
            "@odata.context": format!(
                "{}/api/data/v9.2/$metadata#EntityDefinitions(EntitySetName,PrimaryIdAttribute,LogicalCollectionName,PrimaryNameAttribute,LogicalName)",
                env.emulator.url()
            ),
            "value": [{
                "EntitySetName": "contacts",
                "PrimaryIdAttribute": "contactid",
                "LogicalCollectionName": "contacts",
                "PrimaryNameAttribute": "fullname",
                "LogicalName": "contact",
                "MetadataId": "608861bc-50a4-4c5f-a02c-21fe1943e2cf",
            }]
        })
    );

    // The page's enum filter: every emulated table is user owned.
    let response = env
        .get("EntityDefinitions?$select=LogicalName&$filter=OwnershipType%20eq%20Microsoft.Dynamics.CRM.OwnershipTypes'UserOwned'")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    let mut names: Vec<&str> = body["value"]
        .as_array()
        .expect("value")
        .iter()
        .filter_map(|d| d["LogicalName"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["account", "contact", "example_record", "sample_example"]);

    // Without $select, every served property, and no paging.
    let response = env.get("EntityDefinitions").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["value"].as_array().map(Vec::len), Some(4));
    assert!(body.get("@odata.nextLink").is_none());
}

#[tokio::test]
async fn an_unknown_table_is_an_empty_collection_by_filter_and_404_by_key() {
    let env = Env::default().await;
    let response = env
        .get("EntityDefinitions?$filter=LogicalName%20eq%20'nosuchtable'&$select=EntitySetName")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["value"], json!([]));

    let response = env
        .get("EntityDefinitions(LogicalName='nosuchtable')?$select=EntitySetName")
        .await;
    let (code, message) = odata_error(response, StatusCode::NOT_FOUND).await;
    assert_eq!(code, "0x80041102");
    assert!(message.contains("'nosuchtable'"), "{message}");

    let response = env.get("EntityDefinitions?$select=NoSuchProperty").await;
    let (_, message) = odata_error(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(
        message,
        "Could not find a property named 'NoSuchProperty' on type 'Microsoft.Dynamics.CRM.EntityMetadata'."
    );
}
