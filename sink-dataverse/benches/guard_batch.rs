//! The sink's CPU work per change, without I/O: the staleness guard's decision
//! (`guard::decide`, and reading the stored row it decides on), and the `$batch` wire format
//! (`batch::render` of a full batch of conditional PATCHes, `batch::parse` of its answer).
//!
//! `cargo bench -p sink-dataverse --bench guard_batch`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use schemas::{Customer, CustomerOp};
use serde_json::{Value, json};
use sink_dataverse::{
    SinkConfig,
    batch::{self, PartRequest},
    guard::{self, Decision, Precondition, Request, StoredRow},
    mapping::Columns,
};

/// Operations per `$batch`: the sink's default `batch_size`.
const BATCH: usize = 50;

fn change(n: usize, created: i64) -> Customer {
    let mut c = Customer::deletion(
        format!("cus_bench_{n:06}"),
        format!("evt_bench_{n:06}_{created}"),
        "customer.updated",
        created,
        false,
    );
    c.op = CustomerOp::Upsert;
    c.email = Some(format!("customer{n}@example.com"));
    c.first_name = Some("Jenny".into());
    c.last_name = Some(format!("Rosen {n}"));
    c.phone = Some("+14155552671".into());
    c.address_city = Some("South San Francisco".into());
    c.address_postal_code = Some("94080".into());
    c.address_country_name = Some("United States".into());
    c
}

/// The contact as the sink reads it back: written by an earlier change of `created`.
fn stored(columns: &Columns, created: i64) -> Value {
    json!({
        "@odata.etag": "W/\"123456\"",
        columns.alternate_key.clone(): "cus_bench_000001",
        columns.created.clone(): created,
        columns.rank.clone(): 1,
        columns.event_ids.clone(): format!("evt_bench_000001_{created}"),
        columns.deleted.clone(): false,
        "emailaddress1": "old@example.com",
        "firstname": "Jenny",
        "lastname": "Rosen",
        "telephone1": "+14155552671",
        "address1_city": "South San Francisco",
        "address1_postalcode": "94080",
        "address1_country": "United States",
    })
}

/// A batch of `BATCH` conditional PATCHes, as the decisions of `BATCH` changes make them.
fn parts(columns: &Columns, base: &str) -> Vec<PartRequest> {
    (0..BATCH)
        .map(|n| {
            let Decision::Write(write) = guard::decide(columns, &change(n, 1_700_000_100), None) else {
                panic!("a new contact is written")
            };
            let Request::Patch(body) = write.request else {
                panic!("a create is a PATCH")
            };
            let condition = match write.precondition {
                Precondition::Matches(etag) => ("If-Match", etag),
                Precondition::Absent => ("If-None-Match", "*".to_string()),
            };
            PartRequest {
                method: "PATCH",
                url: format!("{base}/contacts({}='cus_bench_{n:06}')", columns.alternate_key),
                headers: vec![condition, ("Prefer", "return=representation".into())],
                body: Some(serde_json::to_string(&body).expect("a JSON map serialises")),
            }
        })
        .collect()
}

/// Dataverse's answer to that batch: one `204` with its new etag per part.
fn response(base: &str) -> (String, Vec<u8>) {
    let boundary = "batchresponse_1f0b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";
    let mut body = String::new();
    for n in 0..BATCH {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\
             Content-ID: {}\r\n\r\nHTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\n\
             ETag: W/\"{}\"\r\nOData-EntityId: {base}/contacts(00000000-0000-0000-0000-{n:012})\r\n\r\n\r\n",
            n + 1,
            200_000 + n
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    (format!("multipart/mixed; boundary={boundary}"), body.into_bytes())
}

fn benches(c: &mut Criterion) {
    let columns = Columns::from_config(&SinkConfig::default());
    let newer = change(1, 1_700_000_200);
    let row_json = stored(&columns, 1_700_000_100);
    let row = StoredRow::from_json(&columns, &row_json).expect("the row has an etag");
    let newest = StoredRow::from_json(&columns, &stored(&columns, 1_700_000_300)).expect("etag");

    let mut group = c.benchmark_group("guard");
    group.throughput(Throughput::Elements(1));
    group.bench_function("stored_row_from_json", |b| {
        b.iter(|| StoredRow::from_json(&columns, black_box(&row_json)))
    });
    group.bench_function("decide_create", |b| {
        b.iter(|| guard::decide(&columns, black_box(&newer), None))
    });
    group.bench_function("decide_update", |b| {
        b.iter(|| guard::decide(&columns, black_box(&newer), Some(&row)))
    });
    group.bench_function("decide_stale_skip", |b| {
        b.iter(|| guard::decide(&columns, black_box(&newer), Some(&newest)))
    });
    group.finish();

    let base = "https://org.crm.dynamics.com/api/data/v9.2";
    let parts = parts(&columns, base);
    let (content_type, answer) = response(base);
    assert_eq!(batch::parse(&content_type, &answer).expect("parses").len(), BATCH);
    let boundary = batch::new_boundary();
    let mut group = c.benchmark_group("batch_50");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("render", |b| {
        b.iter(|| batch::render(&boundary, black_box(&parts)))
    });
    group.bench_function("parse", |b| {
        b.iter(|| batch::parse(&content_type, black_box(&answer)).expect("parses"))
    });
    group.bench_function("parse_match_answers", |b| {
        b.iter(|| {
            let answers = batch::parse(&content_type, black_box(&answer)).expect("parses");
            batch::match_answers(answers, BATCH).expect("one answer per part")
        })
    });
    group.finish();
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);
