//! Two sinks, each remembering what it last wrote, racing over the same contacts: two consumer
//! groups reading one topic, so every change reaches Dataverse twice, from writers whose caches go
//! stale under each other. A stale cache must cost a 412 and a read, never a wrong row.

use std::collections::BTreeMap;

use schemas::{Customer, CustomerOp};

use crate::support::{Admin, Env, Sink, assert_contact, assert_tombstone, delete, upsert};

/// The state a customer's contact must end in: the tombstone once a delete arrived, otherwise
/// the newest change (times here are distinct per customer).
fn expected(changes: &[Customer]) -> BTreeMap<String, Customer> {
    let mut want: BTreeMap<String, Customer> = BTreeMap::new();
    for c in changes {
        let keep = match want.get(&c.customer_id) {
            None => true,
            Some(w) if w.op == CustomerOp::Delete => false,
            Some(_) if c.op == CustomerOp::Delete => true,
            Some(w) => c.source_event_created > w.source_event_created,
        };
        if keep {
            want.insert(c.customer_id.clone(), c.clone());
        }
    }
    want
}

#[tokio::test(flavor = "multi_thread")]
async fn two_sinks_with_their_own_caches_race_and_every_contact_ends_right() {
    let env = Env::start().await;
    let t = env.topics(3).await;
    let emu = dataverse_emulator::spawn(dataverse_emulator::Config::default())
        .await
        .unwrap();
    let admin = Admin::of(&emu);
    let customers = 60;
    // Phase one: each customer's create and two updates, delivered newest first for every
    // third customer.
    let mut first = Vec::new();
    for n in 0..customers {
        let id = format!("cus_race_{n}");
        let mut life = vec![
            upsert(&id, 100, "One"),
            upsert(&id, 110, "Two"),
            upsert(&id, 120, "Three"),
        ];
        if n % 3 == 0 {
            life.reverse();
        }
        first.extend(life);
    }
    env.produce(&t.input, &first).await;

    let config = env.config(&t, &emu);
    let mut other = config.clone();
    other.group = format!("{}-other", t.group);
    let a = Sink::start(config).await;
    let b = Sink::start(other.clone()).await;
    env.wait_caught_up(&t.group, &t.input).await;
    env.wait_caught_up(&other.group, &t.input).await;

    // Phase two: a newer update of every customer, and a delete of every fifth, late update
    // after it. Both sinks remember phase one's rows; whichever writes second finds the row
    // changed under its cache.
    let mut second = Vec::new();
    for n in 0..customers {
        let id = format!("cus_race_{n}");
        second.push(upsert(&id, 200, "Four"));
        if n % 5 == 0 {
            second.push(delete(&id, 300));
            second.push(upsert(&id, 250, "Late"));
        }
    }
    env.produce(&t.input, &second).await;
    env.wait_caught_up(&t.group, &t.input).await;
    env.wait_caught_up(&other.group, &t.input).await;

    let contacts = admin.contacts().await;
    let all: Vec<Customer> = first.iter().chain(&second).cloned().collect();
    for (id, want) in expected(&all) {
        let row = &contacts[&id];
        match want.op {
            CustomerOp::Delete => assert_tombstone(row, want.source_event_created),
            CustomerOp::Upsert => assert_contact(row, &want),
        }
    }
    let conflicts =
        a.metric("sink_dataverse_conflicts_total").await + b.metric("sink_dataverse_conflicts_total").await;
    assert!(
        conflicts >= f64::from(customers),
        "every customer's newer update met a stale cache in one of the sinks ({conflicts} conflicts)"
    );
    let hits = a
        .metric("sink_dataverse_contact_cache_lookups_total{result=\"hit\"}")
        .await;
    assert!(hits > 0.0, "known contacts were written from the cache");
    a.stop().await;
    b.stop().await;
}
