//! The bulk operation messages (`CreateMultiple`, `UpdateMultiple`, `UpsertMultiple`), with the
//! requests of Microsoft's "Use bulk operation messages" page and the action reference pages.

use dataverse_emulator::Config;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Env, documented_tables, header, odata_error, send_documented};

const CREATE_MULTIPLE: &str = r#"POST [Organization Uri]/api/data/v9.2/sample_examples/Microsoft.Dynamics.CRM.CreateMultiple HTTP/1.1
OData-MaxVersion: 4.0
OData-Version: 4.0
If-None-Match: null
Accept: application/json
Content-Type: application/json; charset=utf-8

{
    "Targets": [
        {
            "sample_name": "sample record 0000001",
            "@odata.type": "Microsoft.Dynamics.CRM.sample_example"
        },
        {
            "sample_name": "sample record 0000002",
            "@odata.type": "Microsoft.Dynamics.CRM.sample_example"
        },
        {
            "sample_name": "sample record 0000003",
            "@odata.type": "Microsoft.Dynamics.CRM.sample_example"
        }
    ]
}"#;

async fn create_three(env: &Env) -> Vec<String> {
    let response = send_documented(env, CREATE_MULTIPLE).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    body["Ids"]
        .as_array()
        .expect("Ids")
        .iter()
        .map(|id| id.as_str().expect("id").to_owned())
        .collect()
}

fn name_of(rows: &[Value], id: &str) -> Value {
    rows.iter()
        .find(|r| r["sample_exampleid"] == id)
        .map(|r| r["sample_name"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn create_multiple_answers_the_ids_of_the_records_it_created() {
    let env = Env::start(documented_tables()).await;
    let response = send_documented(&env, CREATE_MULTIPLE).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "odata-version"), "4.0");
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["@odata.context"],
        format!(
            "{}/api/data/v9.2/$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse",
            env.emulator.url()
        )
    );
    let ids: Vec<&str> = body["Ids"]
        .as_array()
        .expect("Ids")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(ids.len(), 3);
    let rows = env.rows("sample_examples").await;
    assert_eq!(rows.len(), 3);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(name_of(&rows, id), format!("sample record 000000{}", i + 1));
    }
    assert_eq!(env.stats().await["operations"]["created"], 3);
}

#[tokio::test]
async fn update_multiple_updates_by_primary_key_and_applies_only_the_first_of_duplicates() {
    let env = Env::start(documented_tables()).await;
    let ids = create_three(&env).await;
    let documented = r#"POST [Organization Uri]/api/data/v9.2/sample_examples/Microsoft.Dynamics.CRM.UpdateMultiple?tag=CreateUpdateMultiple HTTP/1.1
OData-MaxVersion: 4.0
OData-Version: 4.0
If-None-Match: null
Accept: application/json
Content-Type: application/json; charset=utf-8

{
    "Targets": [
        {
            "sample_name": "sample record 0000001 Updated",
            "@odata.type": "Microsoft.Dynamics.CRM.sample_example",
            "sample_exampleid": "8f4c3f92-312b-ee11-bdf4-000d3a993550"
        },
        {
            "sample_name": "sample record 0000002 Updated",
            "@odata.type": "Microsoft.Dynamics.CRM.sample_example",
            "sample_exampleid": "904c3f92-312b-ee11-bdf4-000d3a993550"
        },
        {
            "sample_name": "sample record 0000003 Updated",
            "@odata.type": "Microsoft.Dynamics.CRM.sample_example",
            "sample_exampleid": "914c3f92-312b-ee11-bdf4-000d3a993550"
        }
    ]
}"#
    .replace("8f4c3f92-312b-ee11-bdf4-000d3a993550", &ids[0])
    .replace("904c3f92-312b-ee11-bdf4-000d3a993550", &ids[1])
    .replace("914c3f92-312b-ee11-bdf4-000d3a993550", &ids[2]);
    let response = send_documented(&env, &documented).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&response, "odata-version"), "4.0");
    let rows = env.rows("sample_examples").await;
    assert_eq!(rows.len(), 3, "updates never create");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            name_of(&rows, id),
            format!("sample record 000000{} Updated", i + 1)
        );
    }

    // Two records naming one row: the first is applied, the later one ignored.
    let record = |name: &str| json!({"@odata.type": "Microsoft.Dynamics.CRM.sample_example", "sample_exampleid": ids[0], "sample_name": name});
    let response = env
        .post(
            "sample_examples/Microsoft.Dynamics.CRM.UpdateMultiple",
            json!({"Targets": [record("first"), record("second")]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(name_of(&env.rows("sample_examples").await, &ids[0]), "first");

    // A record that does not exist fails the whole request; the earlier record is rolled back.
    let missing = "00000000-0000-0000-0000-000000000001";
    let response = env
        .post(
            "sample_examples/Microsoft.Dynamics.CRM.UpdateMultiple",
            json!({"Targets": [
                record("rolled back"),
                {"@odata.type": "Microsoft.Dynamics.CRM.sample_example", "sample_exampleid": missing, "sample_name": "x"},
            ]}),
        )
        .await;
    let (code, message) = odata_error(response, StatusCode::NOT_FOUND).await;
    assert_eq!(code, "0x80040217");
    assert_eq!(
        message,
        format!("sample_example With Id = {missing} Does Not Exist")
    );
    let rows = env.rows("sample_examples").await;
    assert_eq!(name_of(&rows, &ids[0]), "first");
    assert_eq!(rows.len(), 3);

    // A record that names no row at all.
    let response = env
        .post(
            "sample_examples/Microsoft.Dynamics.CRM.UpdateMultiple",
            json!({"Targets": [{"@odata.type": "Microsoft.Dynamics.CRM.sample_example", "sample_name": "x"}]}),
        )
        .await;
    let (code, message) = odata_error(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("0x80040203", "Entity Id must be specified for Update")
    );
}

#[tokio::test]
async fn upsert_multiple_creates_or_updates_by_alternate_key_in_odata_id_or_in_the_record() {
    let env = Env::start(documented_tables()).await;
    let response = env
        .patch(
            "sample_examples(sample_keyattribute='0000001')",
            json!({"sample_name": "before"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = send_documented(
        &env,
        r#"POST [Organization Uri]/api/data/v9.2/sample_examples/Microsoft.Dynamics.CRM.UpsertMultiple HTTP/1.1
OData-MaxVersion: 4.0
OData-Version: 4.0
If-None-Match: null
Accept: application/json
Content-Type: application/json; charset=utf-8

{
  "Targets": [
    {
      "@odata.type": "Microsoft.Dynamics.CRM.sample_example",
      "sample_name": "sample record 0000001",
      "@odata.id": "sample_examples(sample_keyattribute='0000001')"
    },
    {
      "@odata.type": "Microsoft.Dynamics.CRM.sample_example",
      "sample_name": "sample record 0000002",
      "@odata.id": "sample_examples(sample_keyattribute='0000002')"
    },
    {
      "@odata.type": "Microsoft.Dynamics.CRM.sample_example",
      "sample_name": "sample record 0000003",
      "@odata.id": "sample_examples(sample_keyattribute='0000003')"
    },
    {
      "@odata.type": "Microsoft.Dynamics.CRM.sample_example",
      "sample_name": "sample record 0000004",
      "@odata.id": "sample_examples(sample_keyattribute='0000004')"
      
    }
  ]
}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&response, "odata-version"), "4.0");
    assert_eq!(
        response.bytes().await.expect("body").len(),
        0,
        "no UpsertMultipleResponse"
    );
    let mut rows: Vec<(String, String)> = env
        .rows("sample_examples")
        .await
        .iter()
        .map(|r| {
            (
                r["sample_keyattribute"].as_str().expect("key").to_owned(),
                r["sample_name"].as_str().expect("name").to_owned(),
            )
        })
        .collect();
    rows.sort();
    let expected: Vec<(String, String)> = (1..=4)
        .map(|i| (format!("000000{i}"), format!("sample record 000000{i}")))
        .collect();
    assert_eq!(
        rows, expected,
        "one updated, three created, key values copied from @odata.id"
    );
    let stats = env.stats().await;
    assert_eq!(stats["operations"]["created"], 4, "the PATCH and three upserts");
    assert_eq!(stats["operations"]["updated"], 1);

    // The key in the record itself, on the default contacts table.
    let contact = |customer: &str, name: &str| json!({"@odata.type": "Microsoft.Dynamics.CRM.contact", "new_stripecustomerid": customer, "lastname": name});
    let response = env
        .post(
            "contacts/Microsoft.Dynamics.CRM.UpsertMultiple",
            json!({"Targets": [contact("cus_1", "One"), contact("cus_2", "Two")]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = env
        .post(
            "contacts/Microsoft.Dynamics.CRM.UpsertMultiple",
            json!({"Targets": [contact("CUS_1", "One again")]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let rows = env.rows("contacts").await;
    assert_eq!(rows.len(), 2, "keys compare without regard to case");
    assert!(rows.iter().any(|r| r["lastname"] == "One again"));

    // Two records with one key: an error, and nothing written.
    let response = env
        .post(
            "contacts/Microsoft.Dynamics.CRM.UpsertMultiple",
            json!({"Targets": [contact("cus_3", "Three"), contact("cus_3", "Three again")]}),
        )
        .await;
    let (code, message) = odata_error(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(code, "0x80040203");
    assert!(message.contains("UpsertMultiple"), "{message}");
    assert_eq!(env.rows("contacts").await.len(), 2);
}

#[tokio::test]
async fn bulk_errors_answer_like_dataverse_and_roll_back_the_whole_request() {
    let env = Env::default().await;
    let action = "contacts/Microsoft.Dynamics.CRM.CreateMultiple";
    let contact = |value: Value| {
        let mut record = json!({"@odata.type": "Microsoft.Dynamics.CRM.contact"});
        record
            .as_object_mut()
            .expect("object")
            .extend(value.as_object().expect("object").clone());
        record
    };

    let response = env.post(action, json!({})).await;
    let (code, message) = odata_error(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("0x80040203", "Required field 'Targets' is missing")
    );

    let response = env.post(action, json!({"Targets": [], "Target": {}})).await;
    let (code, message) = odata_error(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(code, "0x80048d19");
    assert_eq!(
        message,
        "The parameter 'Target' in the request payload is not a valid parameter for the operation 'CreateMultiple'."
    );

    let response = env
        .post(action, json!({"Targets": [{"lastname": "untyped"}]}))
        .await;
    let (code, message) = odata_error(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(code, "0x80048d19");
    assert!(message.contains("@odata.type"), "{message}");

    let response = env
        .post(
            action,
            json!({"Targets": [{"@odata.type": "Microsoft.Dynamics.CRM.account", "lastname": "x"}]}),
        )
        .await;
    let (code, message) = odata_error(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(code, "0x80048d19");
    assert!(message.contains("Microsoft.Dynamics.CRM.account"), "{message}");

    // A failing third record: the first two are rolled back.
    let response = env
        .post(
            action,
            json!({"Targets": [
                contact(json!({"lastname": "a"})),
                contact(json!({"lastname": "b"})),
                contact(json!({"lastname": 7})),
            ]}),
        )
        .await;
    let (code, message) = odata_error(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(code, "0x80048d19");
    assert!(message.contains("'lastname'"), "{message}");
    assert!(env.rows("contacts").await.is_empty());

    // Two records with one alternate key value.
    let response = env
        .post(
            action,
            json!({"Targets": [
                contact(json!({"new_stripecustomerid": "cus_1"})),
                contact(json!({"new_stripecustomerid": "cus_1"})),
            ]}),
        )
        .await;
    let (code, _) = odata_error(response, StatusCode::PRECONDITION_FAILED).await;
    assert_eq!(code, "0x80060892");
    assert!(env.rows("contacts").await.is_empty());
    assert_eq!(env.stats().await["operations"]["created"], 0);

    // Actions are POSTed; an unknown action is an unknown segment.
    let response = env.get(action).await;
    odata_error(response, StatusCode::METHOD_NOT_ALLOWED).await;
    let response = env
        .post(
            "contacts/Microsoft.Dynamics.CRM.DeleteMultiple",
            json!({"Targets": []}),
        )
        .await;
    odata_error(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn a_bulk_action_is_one_request_but_pays_execution_time_per_record() {
    let mut config = Config::default();
    config.latency.default_ms = 100;
    config.limits.window_ms = 60_000;
    let env = Env::start(config).await;
    let targets: Vec<Value> = (0..3)
        .map(|i| json!({"@odata.type": "Microsoft.Dynamics.CRM.contact", "lastname": format!("n{i}")}))
        .collect();
    let response = env
        .post(
            "contacts/Microsoft.Dynamics.CRM.CreateMultiple",
            json!({ "Targets": targets }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "x-ms-ratelimit-burst-remaining-xrm-requests"),
        "5999"
    );
    let stats = env.stats().await;
    let usage = &stats["limits"]["sink-dataverse"];
    assert_eq!(usage["requests_in_window"], 1, "{stats}");
    assert!(
        usage["execution_ms_in_window"].as_u64() >= Some(300),
        "three records cost three operations' time: {stats}"
    );
    assert_eq!(stats["operations"]["created"], 3);
}
