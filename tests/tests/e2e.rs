//! End to end, every component a real process: signed Stripe webhooks into the gateway, contacts
//! out of the Dataverse emulator.

use std::time::Duration;

use harness::{
    pipeline::{Pipeline, Stage, customer_event, stripe_signature},
    wait_until,
};
use serde_json::json;

fn customer(id: &str, name: &str, email: &str) -> serde_json::Value {
    json!({
        "id": id,
        "object": "customer",
        "name": name,
        "email": email,
        "phone": "(415) 555-2671",
        "description": null,
        "address": {"line1": " 1 Market St ", "line2": "", "city": "San Francisco", "state": "CA", "postal_code": "94105", "country": "us"},
        "metadata": {"plan": "gold"},
        "livemode": false,
        "some_future_field": {"nested": [1, 2, 3]}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_webhooks_become_normalised_contacts() {
    let pipeline = Pipeline::start().await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    let created = customer_event(
        "evt_e2e_1",
        "customer.created",
        now - 10,
        customer("cus_e2e_1", "  Grace   Hopper ", " Grace.Hopper@Navy.MIL "),
    );
    let response = pipeline.send_webhook(&created).await.unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);

    let contact = wait_until("the contact in Dataverse", Duration::from_secs(60), || async {
        pipeline.contact("cus_e2e_1").await.ok().flatten()
    })
    .await
    .unwrap();
    assert_eq!(contact["firstname"], "Grace");
    assert_eq!(contact["lastname"], "Hopper");
    assert_eq!(contact["emailaddress1"], "grace.hopper@navy.mil");
    assert_eq!(contact["telephone1"], "+14155552671");
    assert_eq!(contact["address1_line1"], "1 Market St");
    assert_eq!(contact["address1_city"], "San Francisco");

    // An update applies; a stale, older update delivered afterwards does not undo it.
    let updated = customer_event(
        "evt_e2e_2",
        "customer.updated",
        now - 5,
        customer("cus_e2e_1", "Grace Brewster Hopper", "grace@example.com"),
    );
    assert_eq!(pipeline.send_webhook(&updated).await.unwrap().status(), 200);
    let stale = customer_event(
        "evt_e2e_0",
        "customer.updated",
        now - 60,
        customer("cus_e2e_1", "Old Name", "old@example.com"),
    );
    assert_eq!(pipeline.send_webhook(&stale).await.unwrap().status(), 200);
    // A marker event after both, on the same customer's partition, shows when they were processed.
    let marker = customer_event(
        "evt_e2e_3",
        "customer.created",
        now,
        customer("cus_e2e_2", "Marker", "m@example.com"),
    );
    assert_eq!(pipeline.send_webhook(&marker).await.unwrap().status(), 200);
    wait_until("the newer update applied", Duration::from_secs(60), || async {
        let c = pipeline.contact("cus_e2e_1").await.ok().flatten()?;
        (c["emailaddress1"] == "grace@example.com").then_some(())
    })
    .await
    .unwrap();
    wait_until("the marker contact", Duration::from_secs(60), || async {
        pipeline.contact("cus_e2e_2").await.ok().flatten()
    })
    .await
    .unwrap();
    let stale_sent_later = customer_event(
        "evt_e2e_4",
        "customer.updated",
        now - 30,
        customer("cus_e2e_1", "Stale Again", "stale@example.com"),
    );
    assert_eq!(
        pipeline.send_webhook(&stale_sent_later).await.unwrap().status(),
        200
    );
    let marker2 = customer_event(
        "evt_e2e_5",
        "customer.updated",
        now,
        customer("cus_e2e_2", "Marker Two", "m2@example.com"),
    );
    assert_eq!(pipeline.send_webhook(&marker2).await.unwrap().status(), 200);
    wait_until("the second marker", Duration::from_secs(60), || async {
        let c = pipeline.contact("cus_e2e_2").await.ok().flatten()?;
        (c["emailaddress1"] == "m2@example.com").then_some(())
    })
    .await
    .unwrap();
    let c = pipeline.contact("cus_e2e_1").await.unwrap().unwrap();
    assert_eq!(
        c["emailaddress1"], "grace@example.com",
        "older events never overwrite newer ones"
    );

    // A redelivery of an accepted event is acknowledged; a forged one is refused with the reason.
    assert_eq!(pipeline.send_webhook(&created).await.unwrap().status(), 200);
    let now_u = now as u64;
    let forged_body = customer_event(
        "evt_e2e_forged",
        "customer.updated",
        now,
        customer("cus_e2e_1", "Mallory", "m@evil.example"),
    );
    let forged = pipeline
        .send_webhook_with(
            &forged_body,
            &stripe_signature("whsec_not_the_secret", now_u, forged_body.as_bytes()),
        )
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    assert!(
        forged
            .text()
            .await
            .unwrap()
            .contains("No signatures found matching the expected signature")
    );
    assert!(
        pipeline.service(Stage::Gateway).is_some(),
        "the gateway is still running"
    );
    let c = pipeline.contact("cus_e2e_1").await.unwrap().unwrap();
    assert_eq!(c["emailaddress1"], "grace@example.com");
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_consuming_stages_mid_stream_loses_no_acknowledged_event() {
    let mut pipeline = Pipeline::start().await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let total = 40;
    let send = |i: usize| {
        customer_event(
            &format!("evt_kill_{i}"),
            "customer.created",
            now,
            customer(
                &format!("cus_kill_{i}"),
                &format!("Customer {i}"),
                &format!("c{i}@example.com"),
            ),
        )
    };

    for i in 0..total / 2 {
        assert_eq!(pipeline.send_webhook(&send(i)).await.unwrap().status(), 200);
    }
    // Crash both consuming stages while the first half is in flight, send the rest, restart.
    pipeline.kill(Stage::Enricher);
    pipeline.kill(Stage::Sink);
    for i in total / 2..total {
        assert_eq!(
            pipeline.send_webhook(&send(i)).await.unwrap().status(),
            200,
            "the gateway does not depend on them"
        );
    }
    pipeline.start_stage(Stage::Enricher).await.unwrap();
    pipeline.start_stage(Stage::Sink).await.unwrap();

    let contacts = wait_until(
        "every acknowledged customer in Dataverse",
        Duration::from_secs(120),
        || async {
            let contacts = pipeline.contacts().await.ok()?;
            let found = (0..total)
                .filter(|i| {
                    contacts
                        .iter()
                        .any(|c| c["new_stripecustomerid"] == format!("cus_kill_{i}"))
                })
                .count();
            (found == total).then_some(contacts)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        contacts.len(),
        total,
        "one contact per customer, however often a change was redelivered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_seconds_changes_delivered_newest_first_end_in_the_newest_state() {
    let pipeline = Pipeline::start().await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let event = |id: &str, kind: &str, customer_id: &str, name: &str| {
        customer_event(
            id,
            &format!("customer.{kind}"),
            now,
            customer(customer_id, name, &format!("{}@example.com", name.to_lowercase())),
        )
    };
    // Created, updated and deleted within one second, delivered newest first: the customer is
    // deleted and stays deleted.
    let gone = [
        event("evt_same_del", "deleted", "cus_same_gone", "Deleted"),
        event("evt_same_upd", "updated", "cus_same_gone", "Updated"),
        event("evt_same_new", "created", "cus_same_gone", "Created"),
    ];
    // Created and updated within one second, the update delivered first: the update wins.
    let kept = [
        event("evt_kept_upd", "updated", "cus_same_kept", "Updated"),
        event("evt_kept_new", "created", "cus_same_kept", "Created"),
    ];
    for body in gone.iter().chain(&kept) {
        assert_eq!(pipeline.send_webhook(body).await.unwrap().status(), 200);
    }
    let sink: std::net::SocketAddr = pipeline
        .url(Stage::Sink)
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    // The three older deliveries are recognised as stale once processed.
    harness::inspect::wait_metric(sink, "sink_dataverse_writes_total{outcome=\"stale\"}", 3.0).await;

    let gone = pipeline.contact("cus_same_gone").await.unwrap().unwrap();
    assert_eq!(gone["new_stripedeleted"], true, "{gone}");
    assert_eq!(
        gone["statecode"], 1,
        "a deleted customer never becomes active again: {gone}"
    );
    let kept = pipeline.contact("cus_same_kept").await.unwrap().unwrap();
    assert_eq!(kept["emailaddress1"], "updated@example.com", "{kept}");
    assert_eq!(kept["statecode"], 0, "{kept}");
}
