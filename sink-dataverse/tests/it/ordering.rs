//! Stripe does not order deliveries: an older change must never overwrite a newer one, and a
//! deleted customer never comes back. Within one second, `created` comes before `updated` before
//! `deleted`; two updates of one second apply in partition order, and redeliveries change nothing.

use crate::support::{Admin, Env, Sink, assert_contact, assert_tombstone, create, delete, upsert};

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
    // Two updates of one second, then the first delivered again (another gateway replica).
    let same_second = [
        upsert("cus_d", 500, "X"),
        upsert("cus_d", 500, "Y"),
        upsert("cus_d", 500, "X"),
    ];
    let deleted_then_newer = [delete("cus_e", 100), upsert("cus_e", 200, "Back")];
    // One second's whole life, delivered newest first.
    let one_second_newest_first = [
        delete("cus_f", 700),
        upsert("cus_f", 700, "Updated"),
        create("cus_f", 700, "Created"),
    ];
    let created_after_updated = [upsert("cus_g", 800, "Updated"), create("cus_g", 800, "Created")];
    let all: Vec<_> = [
        &newest_first[..],
        &deleted_then_late_update,
        &created_deleted_late,
        &same_second,
        &deleted_then_newer,
        &one_second_newest_first,
        &created_after_updated,
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
    // A deleted customer is final, even against a newer update.
    assert_tombstone(&contacts["cus_e"], 100);
    assert_tombstone(&contacts["cus_f"], 700);
    assert_contact(&contacts["cus_g"], &created_after_updated[0]);

    // The late updates of a, b and c, e's update, f's update and create, g's create.
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"stale\"}")
            .await,
        7.0
    );
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"unchanged\"}")
            .await,
        1.0,
        "the redelivered X"
    );
    assert_eq!(
        sink.metric("sink_dataverse_same_second_ties_total").await,
        1.0,
        "X then Y of one second"
    );
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"tombstoned\"}")
            .await,
        3.0
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
            upsert("cus_late", 100, "Late"),
            delete("cus_late", 50),
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
        "a delete is final, whatever its time"
    );
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"deleted\"}")
            .await,
        2.0
    );
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"already_absent\"}")
            .await,
        1.0
    );
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"stale\"}")
            .await,
        0.0
    );
    sink.stop().await;
}
