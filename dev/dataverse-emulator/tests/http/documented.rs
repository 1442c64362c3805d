//! Requests copied from Microsoft's Dataverse Web API documentation ("Create a table row", "Use Upsert
//! to Create or Update a record", "Perform conditional operations"), sent as printed, with the
//! documented statuses, headers and bodies checked. The tables are the ones the examples use.

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Env, documented_tables, header, send_documented};

#[tokio::test]
async fn create_a_table_row_basic_create_and_create_with_data_returned() {
    let env = Env::start(documented_tables()).await;
    let response = send_documented(
        &env,
        r#"POST [Organization URI]/api/data/v9.0/accounts HTTP/1.1
Content-Type: application/json; charset=utf-8
OData-MaxVersion: 4.0
OData-Version: 4.0
Accept: application/json

{
    "name": "Sample Account",
    "creditonhold": false,
    "address1_latitude": 47.639583,
    "description": "This is the description of the sample account",
    "revenue": 5000000,
    "accountcategorycode": 1
}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&response, "odata-version"), "4.0");
    let entity_id = header(&response, "odata-entityid");
    let prefix = format!("{}/api/data/v9.0/accounts(", env.emulator.url());
    assert!(
        entity_id.starts_with(&prefix) && entity_id.ends_with(')') && entity_id.len() == prefix.len() + 37,
        "{entity_id}"
    );

    let response = send_documented(
        &env,
        r#"POST [Organization URI]/api/data/v9.0/accounts?$select=name,creditonhold,address1_latitude,description,revenue,accountcategorycode,createdon HTTP/1.1
OData-MaxVersion: 4.0
OData-Version: 4.0
Accept: application/json
Content-Type: application/json; charset=utf-8
Prefer: return=representation

{
    "name": "Sample Account",
    "creditonhold": false,
    "address1_latitude": 47.639583,
    "description": "This is the description of the sample account",
    "revenue": 5000000,
    "accountcategorycode": 1
}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(&response, "content-type"),
        "application/json; odata.metadata=minimal"
    );
    assert_eq!(header(&response, "preference-applied"), "return=representation");
    assert_eq!(header(&response, "odata-version"), "4.0");
    assert!(
        header(&response, "odata-entityid").is_empty(),
        "not sent with the representation"
    );
    let body: Value = response.json().await.expect("json");
    assert!(
        body["@odata.context"]
            .as_str()
            .expect("context")
            .starts_with(&format!(
                "{}/api/data/v9.0/$metadata#accounts",
                env.emulator.url()
            ))
    );
    assert!(body["@odata.etag"].as_str().expect("etag").starts_with("W/\""));
    assert_eq!(body["name"], "Sample Account");
    assert_eq!(body["creditonhold"], false);
    assert_eq!(body["address1_latitude"], 47.639583);
    assert_eq!(body["revenue"], 5_000_000);
    assert_eq!(body["accountcategorycode"], 1);
    assert!(
        body["createdon"]
            .as_str()
            .is_some_and(|d| d.len() == 20 && d.ends_with('Z'))
    );
    assert!(body["accountid"].as_str().is_some_and(|id| id.len() == 36));
}

#[tokio::test]
async fn use_upsert_create_update_and_return_representation() {
    let env = Env::start(documented_tables()).await;
    let create = r#"PATCH [Organization Uri]/api/data/v9.2/example_records(example_key1=2,example_key2=2) HTTP/1.1
OData-MaxVersion: 4.0
OData-Version: 4.0
If-None-Match: null
Accept: application/json
Content-Type: application/json

{ "example_name": "2:2" }"#;
    let expected_entity_id = format!(
        "{}/api/data/v9.2/example_records(example_key1=2,example_key2=2)",
        env.emulator.url()
    );
    let response = send_documented(&env, create).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&response, "odata-version"), "4.0");
    assert_eq!(header(&response, "odata-entityid"), expected_entity_id);

    let update = create.replace(r#""2:2""#, r#""2:2 Updated""#);
    let response = send_documented(&env, &update).await;
    assert_eq!(
        response.status(),
        StatusCode::NO_CONTENT,
        "identical answer for the update"
    );
    assert_eq!(header(&response, "odata-entityid"), expected_entity_id);
    let rows = env.rows("example_records").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["example_name"], "2:2 Updated");
    assert_eq!(
        (rows[0]["example_key1"].clone(), rows[0]["example_key2"].clone()),
        (2.into(), 2.into()),
        "key values copied from the URL"
    );

    let create_returning = r#"PATCH [Organization Uri]/api/data/v9.2/example_records(example_key1=3,example_key2=3)?$select=example_recordid HTTP/1.1
OData-MaxVersion: 4.0
OData-Version: 4.0
If-None-Match: null
Accept: application/json
Prefer: return=representation
Content-Type: application/json

{ "example_name": "3:3" }"#;
    let response = send_documented(&env, create_returning).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(&response, "content-type"),
        "application/json; odata.metadata=minimal"
    );
    assert_eq!(header(&response, "preference-applied"), "return=representation");
    let etag = header(&response, "etag");
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["@odata.etag"],
        etag.as_str(),
        "ETag header and @odata.etag agree"
    );
    assert_eq!(
        body["@odata.context"],
        format!(
            "{}/api/data/v9.2/$metadata#example_records(example_recordid)/$entity",
            env.emulator.url()
        )
    );
    let id = body["example_recordid"].as_str().expect("id").to_owned();
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(3),
        "only the selected key, the etag and the context: {body}"
    );

    let update_returning = create_returning.replace(r#""3:3""#, r#""3:3 Updated""#);
    let response = send_documented(&env, &update_returning).await;
    assert_eq!(response.status(), StatusCode::OK, "200 shows it was an update");
    let new_etag = header(&response, "etag");
    assert_ne!(new_etag, etag);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["example_recordid"], id.as_str());
}

#[tokio::test]
async fn conditional_operations_limit_upserts_and_apply_optimistic_concurrency() {
    let env = Env::start(documented_tables()).await;
    let prevent_create = r#"PATCH [Organization URI]/api/data/v9.0/accounts(00000000-0000-0000-0000-000000000001) HTTP/1.1
Content-Type: application/json
OData-MaxVersion: 4.0
OData-Version: 4.0
If-Match: *

{
    "name": "Updated Sample Account ",
    "creditonhold": true,
    "address1_latitude": 47.639583,
    "description": "This is the updated description of the sample account",
    "revenue": 6000000,
    "accountcategorycode": 2
}"#;
    let response = send_documented(&env, prevent_create).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        header(&response, "content-type"),
        "application/json; odata.metadata=minimal"
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["error"]["message"],
        "account With Id = 00000000-0000-0000-0000-000000000001 Does Not Exist"
    );

    let prevent_update = prevent_create.replace("If-Match: *", "If-None-Match: *");
    assert_eq!(
        send_documented(&env, &prevent_update).await.status(),
        StatusCode::NO_CONTENT,
        "created: the row did not exist"
    );
    let response = send_documented(&env, &prevent_update).await;
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["error"]["message"],
        "A record with matching key values already exists."
    );

    let delete = r#"DELETE [Organization URI]/api/data/v9.0/accounts(00000000-0000-0000-0000-000000000001) HTTP/1.1
If-Match: W/"470867"
Accept: application/json
OData-MaxVersion: 4.0
OData-Version: 4.0"#;
    let response = send_documented(&env, delete).await;
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        header(&response, "content-type"),
        "application/json; odata.metadata=minimal"
    );
    assert_eq!(header(&response, "odata-version"), "4.0");
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["error"]["message"],
        "The version of the existing record doesn't match the RowVersion property provided."
    );

    let update = r#"PATCH [Organization URI]/api/data/v9.0/accounts(00000000-0000-0000-0000-000000000001) HTTP/1.1
If-Match: W/"470867"
Accept: application/json
OData-MaxVersion: 4.0
OData-Version: 4.0

{"name":"Updated Account Name"}"#;
    let response = send_documented(&env, update).await;
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);

    // Conditional retrieval with the row's current etag in place of the documented one gives 304.
    let rows = env.rows("accounts").await;
    let etag = rows[0]["@odata.etag"].as_str().expect("etag").to_owned();
    let retrieve = r#"GET [Organization URI]/api/data/v9.0/accounts(00000000-0000-0000-0000-000000000001)?$select=accountcategorycode,accountnumber,creditonhold,createdon,numberofemployees,name,revenue   HTTP/1.1
Accept: application/json
OData-MaxVersion: 4.0
OData-Version: 4.0
If-None-Match: W/"468026""#;
    let response = send_documented(&env, retrieve).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the documented etag is not the row's"
    );
    let response = send_documented(&env, &retrieve.replace(r#"W/"468026""#, &etag)).await;
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&response, "odata-version"), "4.0");

    // With the current etag, the delete goes through.
    let response = send_documented(&env, &delete.replace(r#"W/"470867""#, &etag)).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}
