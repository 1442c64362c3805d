//! Create, retrieve, query, upsert, conditional writes, delete, alternate keys and bad input.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Env, contact, contact_key, header, odata_error};

fn id_from_entity_id(entity_id: &str) -> String {
    let start = entity_id.rfind('(').expect("(") + 1;
    entity_id[start..entity_id.len() - 1].to_owned()
}

#[tokio::test]
async fn create_answers_204_with_entity_id_or_201_with_the_representation() {
    let env = Env::default().await;
    let response = env
        .post(
            "contacts",
            json!({"firstname": "Ada", "lastname": "Lovelace", "new_stripecustomerid": "cus_ada"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&response, "odata-version"), "4.0");
    let entity_id = header(&response, "odata-entityid");
    assert!(entity_id.starts_with(&env.api("contacts(")), "{entity_id}");
    let id = id_from_entity_id(&entity_id);

    let response = env
        .get(&format!("contacts({id})?$select=fullname,new_stripecustomerid"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let row: Value = response.json().await.expect("json");
    assert_eq!(row["fullname"], "Ada Lovelace", "fullname is computed");
    assert_eq!(
        row["contactid"],
        id.as_str(),
        "the primary key is always returned"
    );
    assert!(row.get("firstname").is_none(), "$select limits the columns");
    let etag = row["@odata.etag"].as_str().expect("etag");
    assert!(etag.starts_with("W/\"") && etag.ends_with('"'), "{etag}");
    assert!(
        row["@odata.context"]
            .as_str()
            .expect("context")
            .ends_with("$metadata#contacts(fullname,new_stripecustomerid)/$entity")
    );

    let by_key: Value = env.get(&contact_key("cus_ada")).await.json().await.expect("json");
    assert_eq!(by_key["contactid"], id.as_str(), "retrieve by alternate key");
    assert_eq!(by_key["statecode"], 0);
    assert_eq!(by_key["statuscode"], 1);
    assert_eq!(by_key["new_stripedeleted"], false);
    assert!(by_key.get("createdon").is_some() && by_key.get("modifiedon").is_some());

    let response = env
        .request(Method::POST, "contacts?$select=firstname")
        .header("Prefer", "return=representation")
        .json(&json!({"firstname": "Grace"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header(&response, "preference-applied"), "return=representation");
    assert!(header(&response, "content-type").starts_with("application/json; odata.metadata=minimal"));
    let created: Value = response.json().await.expect("json");
    assert_eq!(created["firstname"], "Grace");
    assert!(created["contactid"].as_str().is_some_and(|id| id.len() == 36));

    let (code, message) = odata_error(
        env.get("contacts(00000000-0000-0000-0000-000000000009)").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(code, "0x80040217");
    assert_eq!(
        message,
        "contact With Id = 00000000-0000-0000-0000-000000000009 Does Not Exist"
    );
    odata_error(env.get(&contact_key("cus_missing")).await, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn upsert_creates_then_updates_and_etags_change_on_every_write() {
    let env = Env::default().await;
    let key = contact_key("cus_up");
    let response = env.patch(&key, contact("Ada", "Byron")).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(&response, "odata-entityid"),
        env.api(&key),
        "names the row as the request did"
    );
    let stats = env.stats().await;
    assert_eq!(stats["operations"]["created"], 1);
    assert_eq!(stats["operations"]["updated"], 0);
    let first: Value = env.get(&key).await.json().await.expect("json");

    let response = env
        .patch(
            &key,
            json!({"lastname": "Lovelace", "new_stripeeventcreated": 1_700_000_000}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let stats = env.stats().await;
    assert_eq!(stats["operations"]["created"], 1);
    assert_eq!(stats["operations"]["updated"], 1);
    let second: Value = env.get(&key).await.json().await.expect("json");
    assert_eq!(second["contactid"], first["contactid"], "same row");
    assert_eq!(second["fullname"], "Ada Lovelace");
    assert_eq!(second["new_stripeeventcreated"], 1_700_000_000);
    assert_ne!(second["@odata.etag"], first["@odata.etag"]);
    assert_eq!(env.rows("contacts").await.len(), 1);

    // With Prefer: return=representation, 201 on create and 200 on update.
    let request = |customer: &str| {
        env.request(
            Method::PATCH,
            &format!("{}?$select=contactid", contact_key(customer)),
        )
        .header("Prefer", "return=representation")
        .json(&json!({"firstname": "X"}))
    };
    let created = request("cus_rep").send().await.expect("create");
    assert_eq!(created.status(), StatusCode::CREATED);
    assert!(header(&created, "etag").starts_with("W/\""));
    let updated = request("cus_rep").send().await.expect("update");
    assert_eq!(updated.status(), StatusCode::OK);

    // Upsert by primary key creates the row with that id.
    let id = "11111111-2222-4333-8444-555555555555";
    assert_eq!(
        env.patch(&format!("contacts({id})"), contact("By", "Id"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let row: Value = env
        .get(&format!("contacts({id})"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(row["fullname"], "By Id");
}

#[tokio::test]
async fn conditional_headers_follow_the_documented_rules() {
    let env = Env::default().await;
    let key = contact_key("cus_cond");

    // If-Match: * is update only.
    let response = env
        .request(Method::PATCH, &key)
        .header("If-Match", "*")
        .json(&contact("A", "B"))
        .send()
        .await
        .expect("PATCH");
    let (code, _) = odata_error(response, StatusCode::NOT_FOUND).await;
    assert_eq!(code, "0x80040217");
    assert!(env.rows("contacts").await.is_empty(), "nothing created");

    // If-None-Match: * is create only.
    let create_only = || {
        env.request(Method::PATCH, &key)
            .header("If-None-Match", "*")
            .json(&contact("A", "B"))
    };
    assert_eq!(
        create_only().send().await.expect("create").status(),
        StatusCode::NO_CONTENT
    );
    let (_, message) = odata_error(
        create_only().send().await.expect("again"),
        StatusCode::PRECONDITION_FAILED,
    )
    .await;
    assert_eq!(message, "A record with matching key values already exists.");

    // If-Match: <etag> is optimistic concurrency.
    let row: Value = env.get(&key).await.json().await.expect("json");
    let etag = row["@odata.etag"].as_str().expect("etag").to_owned();
    let with_etag = |body: Value| {
        env.request(Method::PATCH, &key)
            .header("If-Match", etag.as_str())
            .json(&body)
    };
    assert_eq!(
        with_etag(json!({"firstname": "C"}))
            .send()
            .await
            .expect("first")
            .status(),
        StatusCode::NO_CONTENT
    );
    let (code, message) = odata_error(
        with_etag(json!({"firstname": "D"})).send().await.expect("stale"),
        StatusCode::PRECONDITION_FAILED,
    )
    .await;
    assert_eq!(code, "0x80060882");
    assert_eq!(
        message,
        "The version of the existing record doesn't match the RowVersion property provided."
    );
    let stale_delete = env
        .request(Method::DELETE, &key)
        .header("If-Match", etag.as_str())
        .send()
        .await
        .expect("delete");
    odata_error(stale_delete, StatusCode::PRECONDITION_FAILED).await;
    let row: Value = env.get(&key).await.json().await.expect("json");
    assert_eq!(row["firstname"], "C", "the stale writes changed nothing");

    // If-None-Match: null (sent by Microsoft's samples) is no condition; on GET an etag gives 304.
    let response = env
        .request(Method::PATCH, &key)
        .header("If-None-Match", "null")
        .json(&json!({}))
        .send()
        .await
        .expect("null");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let current: Value = env.get(&key).await.json().await.expect("json");
    let current_etag = current["@odata.etag"].as_str().expect("etag");
    let response = env
        .request(Method::GET, &key)
        .header("If-None-Match", current_etag)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn delete_answers_204_then_404() {
    let env = Env::default().await;
    let key = contact_key("cus_del");
    env.patch(&key, contact("A", "B")).await;
    assert_eq!(env.delete(&key).await.status(), StatusCode::NO_CONTENT);
    let (code, _) = odata_error(env.delete(&key).await, StatusCode::NOT_FOUND).await;
    assert_eq!(code, "0x80040217");
    assert!(env.rows("contacts").await.is_empty());
    assert_eq!(env.stats().await["operations"]["deleted"], 1);
}

#[tokio::test]
async fn alternate_keys_stay_unique() {
    let env = Env::default().await;
    assert_eq!(
        env.post("contacts", json!({"new_stripecustomerid": "cus_dup"}))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let (code, message) = odata_error(
        env.post("contacts", json!({"new_stripecustomerid": "CUS_DUP"}))
            .await,
        StatusCode::PRECONDITION_FAILED,
    )
    .await;
    assert_eq!(code, "0x80060892");
    assert!(message.contains("new_stripecustomerid_key"), "{message}");

    let other = env
        .post("contacts", json!({"new_stripecustomerid": "cus_other"}))
        .await;
    let other_id = id_from_entity_id(&header(&other, "odata-entityid"));
    let response = env
        .patch(
            &format!("contacts({other_id})"),
            json!({"new_stripecustomerid": "cus_dup"}),
        )
        .await;
    odata_error(response, StatusCode::PRECONDITION_FAILED).await;
    assert_eq!(env.rows("contacts").await.len(), 2);
}

#[tokio::test]
async fn queries_filter_count_top_and_order() {
    let env = Env::default().await;
    for (customer, first, created) in [
        ("cus_q1", "Ada", 30),
        ("cus_q2", "Grace", 10),
        ("cus_q3", "Alan", 20),
    ] {
        env.patch(
            &contact_key(customer),
            json!({"firstname": first, "new_stripeeventcreated": created}),
        )
        .await;
    }
    let ids = |body: Value| -> Vec<String> {
        body["value"]
            .as_array()
            .expect("value")
            .iter()
            .map(|r| r["new_stripecustomerid"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let query = |q: &str| env.request(Method::GET, &format!("contacts?{q}")).send();

    let body: Value = query("$select=new_stripecustomerid&$filter=new_stripecustomerid eq 'cus_q1' or new_stripecustomerid eq 'cus_q3'&$orderby=new_stripecustomerid")
        .await.expect("or").json().await.expect("json");
    assert_eq!(ids(body), ["cus_q1", "cus_q3"]);

    let body: Value = query("$filter=new_stripeeventcreated ge 20 and startswith(firstname,'a')&$orderby=new_stripeeventcreated desc&$count=true")
        .await.expect("and").json().await.expect("json");
    assert_eq!(body["@odata.count"], 2);
    assert_eq!(ids(body), ["cus_q1", "cus_q3"]);

    let body: Value = query("$top=1&$count=true&$orderby=new_stripeeventcreated")
        .await
        .expect("top")
        .json()
        .await
        .expect("json");
    assert_eq!(body["@odata.count"], 3, "$count counts before $top");
    assert_eq!(ids(body), ["cus_q2"]);

    let body: Value = query("$filter=lastname eq null&$select=firstname")
        .await
        .expect("null")
        .json()
        .await
        .expect("json");
    let names: BTreeSet<String> = body["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|r| r["firstname"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["Ada".to_owned(), "Grace".to_owned(), "Alan".to_owned()])
    );

    let count = env.get("contacts/$count").await.text().await.expect("text");
    assert_eq!(count, "3");

    for (bad, needle) in [
        ("$filter=nope eq 1", "nope"),
        ("$filter=firstname eq", "literal"),
        ("$filter=new_stripeeventcreated eq 'x'", "incompatible types"),
        ("$select=firstname,nope", "nope"),
        ("$top=-1", "$top"),
        ("$skip=1", "$skip"),
    ] {
        let (_, message) = odata_error(query(bad).await.expect("bad"), StatusCode::BAD_REQUEST).await;
        assert!(message.contains(needle), "{bad}: {message}");
    }
}

#[tokio::test]
async fn single_column_get_put_and_delete() {
    let env = Env::default().await;
    let key = contact_key("cus_prop");
    env.patch(&key, contact("Ada", "Byron")).await;
    let value: Value = env
        .get(&format!("{key}/lastname"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(value["value"], "Byron");
    let response = env
        .request(Method::PUT, &format!("{key}/lastname"))
        .json(&json!({"value": "Lovelace"}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let row: Value = env.get(&key).await.json().await.expect("json");
    assert_eq!(row["fullname"], "Ada Lovelace");
    assert_eq!(
        env.delete(&format!("{key}/firstname")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        env.get(&format!("{key}/firstname")).await.status(),
        StatusCode::NO_CONTENT,
        "null value"
    );
    let response = env
        .request(Method::PUT, &format!("{}/lastname", contact_key("cus_none")))
        .json(&json!({"value": "x"}))
        .send()
        .await
        .expect("PUT");
    odata_error(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn bad_input_gets_a_400_with_the_odata_shape_and_a_clear_message() {
    let env = Env::default().await;
    let send = |method: Method, path: &str, body: &str| {
        env.request(method, path)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
    };
    let key = contact_key("cus_x");
    let cases: Vec<(Method, &str, &str, &str)> = vec![
        (Method::POST, "contacts", "{\"firstname\": ", "not valid JSON"),
        (Method::POST, "contacts", "[1,2]", "JSON object"),
        (Method::POST, "contacts", "", "empty"),
        (
            Method::POST,
            "contacts",
            "{\"shoe_size\": 44}",
            "The property 'shoe_size' does not exist on type 'Microsoft.Dynamics.CRM.contact'",
        ),
        (
            Method::PATCH,
            &key,
            "{\"new_stripeeventcreated\": \"soon\"}",
            "Edm.Int64",
        ),
        (Method::PATCH, &key, "{\"firstname\": 5}", "Edm.String"),
        (Method::PATCH, "contacts(not-a-guid)", "{}", "not a valid key"),
        (
            Method::PATCH,
            "contacts(new_stripecustomerid='unterminated)",
            "{}",
            "query syntax",
        ),
        (
            Method::PATCH,
            "contacts(new_stripecustomerid=cus_1)",
            "{}",
            "not a literal",
        ),
        (
            Method::PATCH,
            "contacts(firstname='Ada')",
            "{}",
            "The key in the request URI is not valid for resource",
        ),
        (
            Method::GET,
            "contacts(00000000-0000-0000-0000-00000000000Z)",
            "",
            "not a valid key",
        ),
    ];
    for (method, path, body, needle) in cases {
        let response = send(method.clone(), path, body).await.expect("request");
        let (_, message) = odata_error(response, StatusCode::BAD_REQUEST).await;
        assert!(message.contains(needle), "{method} {path} {body}: {message}");
    }
    let response = env
        .request(Method::POST, "contacts")
        .header("Content-Type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("POST");
    let (_, message) = odata_error(response, StatusCode::BAD_REQUEST).await;
    assert!(message.contains("Content-Type"), "{message}");
    let (_, message) = odata_error(env.get("nothings").await, StatusCode::NOT_FOUND).await;
    assert_eq!(message, "Resource not found for the segment 'nothings'.");
    assert!(
        env.rows("contacts").await.is_empty(),
        "no bad request wrote anything"
    );
}

#[tokio::test]
async fn hostile_input_never_brings_the_server_down() {
    let env = Env::default().await;
    let paths = [
        "contacts(",
        "contacts()",
        "contacts(''')",
        "contacts(new_stripecustomerid='a',)",
        "contacts(%ZZ)",
        "contacts(new_stripecustomerid='%F0%9F%A6%80')",
        "contacts?$filter=((((",
        "contacts?$filter=not",
        "contacts?$filter=contains(firstname",
        "contacts?$orderby=firstname sideways",
        "contacts?$top=99999999999999999999999",
        "contacts/$count/extra",
        "contacts(00000000-0000-0000-0000-000000000001)/nope",
        "$batch",
        "WhoAmI",
        "$metadata",
    ];
    let bodies = [
        "",
        "{",
        "null",
        "{\"a\":",
        "\u{0}\u{1}",
        "{\"firstname\": {\"nested\": true}}",
        "{\"@odata.type\": \"x\"}",
    ];
    for path in paths {
        for method in [
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::PUT,
        ] {
            for body in bodies {
                let response = env
                    .request(method.clone(), path)
                    .header("Content-Type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("answered");
                let status = response.status();
                assert!(
                    status != StatusCode::INTERNAL_SERVER_ERROR,
                    "{method} {path} {body:?} → 500"
                );
                if status.is_client_error() {
                    let body: Value = response
                        .json()
                        .await
                        .unwrap_or_else(|e| panic!("{method} {path}: not JSON: {e}"));
                    assert!(
                        body["error"]["code"]
                            .as_str()
                            .is_some_and(|c| c.starts_with("0x")),
                        "{method} {path}: {body}"
                    );
                }
            }
        }
    }
    let health = env
        .http
        .get(format!("{}/healthz", env.emulator.url()))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn concurrent_upserts_of_one_key_leave_one_row() {
    let env = Env::default().await;
    let key = contact_key("cus_race");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let request = env
            .request(Method::PATCH, &key)
            .json(&json!({"firstname": format!("n{i}")}));
        tasks.spawn(async move { request.send().await.map(|r| r.status()) });
    }
    let statuses: Vec<StatusCode> = tasks
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("answered"))
        .collect();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::NO_CONTENT),
        "{statuses:?}"
    );
    assert_eq!(env.rows("contacts").await.len(), 1);
    let stats = env.stats().await;
    assert_eq!(stats["operations"]["created"], 1);
    assert_eq!(stats["operations"]["updated"], 39);
}

/// `Prefer: odata.maxpagesize` pages a query; each `@odata.nextLink` is used as given and keeps
/// the query's options; rows created or deleted between pages neither repeat nor go missing.
#[tokio::test]
async fn queries_are_paged_with_maxpagesize_and_next_links() {
    let env = Env::default().await;
    for i in 0..7 {
        env.patch(
            &contact_key(&format!("cus_page{i}")),
            json!({"lastname": format!("Row {i}")}),
        )
        .await;
    }
    env.patch(&contact_key("cus_other"), json!({"lastname": "Filtered out"}))
        .await;
    let first = env
        .request(
            Method::GET,
            "contacts?$select=new_stripecustomerid&$filter=startswith(new_stripecustomerid,'cus_page')",
        )
        .header("Prefer", "odata.maxpagesize=3")
        .send()
        .await
        .expect("first page");
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "preference-applied"), "odata.maxpagesize=3");
    let mut page: Value = first.json().await.expect("json");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        let rows = page["value"].as_array().expect("value").clone();
        assert!(rows.len() <= 3, "{page}");
        for row in &rows {
            assert!(
                row.get("lastname").is_none(),
                "$select is kept on every page: {row}"
            );
            seen.push(row["new_stripecustomerid"].as_str().expect("key").to_owned());
        }
        let Some(next) = page["@odata.nextLink"].as_str() else {
            break;
        };
        assert!(next.starts_with(&env.api("contacts?")), "{next}");
        assert!(next.contains("$skiptoken=%3Ccookie%20pagenumber%3D%22"), "{next}");
        if pages == 1 {
            // A row created after the first page: later pages see it once or not at all,
            // and no row of the first page comes again.
            env.patch(&contact_key("cus_page9"), json!({"lastname": "Late"}))
                .await;
        }
        let response = env
            .http
            .get(next)
            .bearer_auth(&env.token)
            .header("Accept", "application/json")
            .header("Prefer", "odata.maxpagesize=3")
            .send()
            .await
            .expect("next page");
        assert_eq!(response.status(), StatusCode::OK);
        page = response.json().await.expect("json");
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no row twice: {seen:?}");
    for i in 0..7 {
        assert!(seen.contains(&format!("cus_page{i}")), "{seen:?}");
    }
    assert!(
        !seen.contains(&"cus_other".to_owned()),
        "the filter holds on every page"
    );
    assert!(pages >= 3, "{pages} pages");

    // Without the preference: up to 5000 rows and no next link; above 5000 the preference is
    // ignored (no Preference-Applied).
    let all = env
        .request(Method::GET, "contacts?$select=new_stripecustomerid")
        .header("Prefer", "odata.maxpagesize=9000")
        .send()
        .await
        .expect("all");
    assert!(all.headers().get("preference-applied").is_none());
    let all: Value = all.json().await.expect("json");
    assert_eq!(all["value"].as_array().expect("value").len(), 9);
    assert!(all.get("@odata.nextLink").is_none(), "{all}");

    // $top answers those rows only, without a next page.
    let top: Value = env
        .request(Method::GET, "contacts?$top=2")
        .header("Prefer", "odata.maxpagesize=1")
        .send()
        .await
        .expect("top")
        .json()
        .await
        .expect("json");
    assert_eq!(top["value"].as_array().expect("value").len(), 2);
    assert!(top.get("@odata.nextLink").is_none(), "{top}");

    let response = env.get("contacts?$skiptoken=nonsense").await;
    let (_, message) = odata_error(response, StatusCode::BAD_REQUEST).await;
    assert!(message.contains("$skiptoken"), "{message}");
}
