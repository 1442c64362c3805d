//! Stripe does not order deliveries: an older change must never overwrite a newer one, and a
//! late, older update must not resurrect a deleted contact. Changes of one second apply in
//! partition order.

use crate::support::{Admin, Env, Sink, assert_contact, assert_tombstone, delete, upsert};

#[tokio::test(flavor = "multi_thread")]
async fn the_newest_change_wins_whatever_the_delivery_order() {
    let env = Env::start().await;
    let t = env.topics(1).await;
    let emu = dataverse_emulator::spawn(dataverse_emulator::Config::default())
        .await
        .unwrap();
    let admin = Admin::of(&emu);

    let newest_first = [upsert("cus_a", 200, "New"), upsert("cus_a", 100, "Old")];
    let deleted_then_late_update = [delete("cus_b", 300), upsert("cus_b", 250, "Late")];
    let created_deleted_late = [
        upsert("cus_c", 100, "Orig"),
        delete("cus_c", 200),
        upsert("cus_c", 150, "Late"),
    ];
    let same_second = [upsert("cus_d", 500, "X"), upsert("cus_d", 500, "Y")];
    let deleted_then_newer = [delete("cus_e", 100), upsert("cus_e", 200, "Back")];
    let all: Vec<_> = [
        &newest_first[..],
        &deleted_then_late_update,
        &created_deleted_late,
        &same_second,
        &deleted_then_newer,
    ]
    .concat();
    env.produce(&t.input, &all).await;

    let sink = Sink::start(env.config(&t, &emu)).await;
    env.wait_caught_up(&t.group, &t.input).await;
    let contacts = admin.contacts().await;

    assert_contact(&contacts["cus_a"], &newest_first[0]);
    // A delete for a contact never seen leaves a tombstone, so the late update stays out.
    assert_tombstone(&contacts["cus_b"], 300);
    assert_eq!(contacts["cus_b"]["lastname"], serde_json::Value::Null);
    // A tombstone keeps the contact's data, and the late update does not bring it back.
    assert_tombstone(&contacts["cus_c"], 200);
    assert_eq!(contacts["cus_c"]["firstname"], "Orig");
    assert_contact(&contacts["cus_d"], &same_second[1]);
    // A newer change after a delete wins (the ordering rule), reactivating the contact.
    assert_contact(&contacts["cus_e"], &deleted_then_newer[1]);
    assert_eq!(contacts["cus_e"]["statuscode"], 1);

    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"stale\"}")
            .await,
        3.0
    );
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"tombstoned\"}")
            .await,
        2.0
    );
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"deactivated\"}")
            .await,
        1.0
    );
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hard_delete_mode_removes_the_contact_and_a_missing_one_counts_as_done() {
    let env = Env::start().await;
    let t = env.topics(1).await;
    let emu = dataverse_emulator::spawn(dataverse_emulator::Config::default())
        .await
        .unwrap();
    let admin = Admin::of(&emu);
    env.produce(
        &t.input,
        &[
            upsert("cus_gone", 100, "Gone"),
            delete("cus_gone", 200),
            delete("cus_never", 100),
            upsert("cus_kept", 100, "Kept"),
            delete("cus_kept", 50),
        ],
    )
    .await;
    let mut config = env.config(&t, &emu);
    config.dataverse.delete_mode = sink_dataverse::config::DeleteMode::Delete;
    let sink = Sink::start(config).await;
    env.wait_caught_up(&t.group, &t.input).await;

    let contacts = admin.contacts().await;
    assert_eq!(
        contacts.keys().collect::<Vec<_>>(),
        vec!["cus_kept"],
        "an older delete is stale"
    );
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"deleted\"}")
            .await,
        1.0
    );
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"already_absent\"}")
            .await,
        1.0
    );
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"stale\"}")
            .await,
        1.0
    );
    sink.stop().await;
}
