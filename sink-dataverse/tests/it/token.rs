//! Tokens expire, and are sometimes revoked early: the sink renews them before expiry, and once
//! more when Dataverse answers 401, so no write fails for it; only the metrics tell.

use harness::wait_until;

use crate::support::{Admin, DEADLINE, Env, Sink, assert_contact, upsert};

#[tokio::test(flavor = "multi_thread")]
async fn an_expiring_token_is_invisible_except_in_metrics() {
    let env = Env::start().await;

    // Tokens that live 2 s: renewed before they expire, while writes go on.
    let t = env.topics(2).await;
    let emu = dataverse_emulator::spawn(dataverse_emulator::Config {
        token_lifetime_secs: 2,
        ..dataverse_emulator::Config::default()
    })
    .await
    .unwrap();
    let admin = Admin::of(&emu);
    let sink = Sink::start(env.config(&t, &emu)).await;
    let mut written = Vec::new();
    let mut wave = 0;
    wait_until("a renewal before expiry", DEADLINE, || {
        wave += 1;
        let changes: Vec<_> = (0..5)
            .map(|i| upsert(&format!("cus_tok{wave:03}x{i}"), 1_760_000_000 + wave, "W"))
            .collect();
        written.extend(changes.clone());
        let (env, t, sink) = (&env, &t, &sink);
        async move {
            env.produce(&t.input, &changes).await;
            env.wait_caught_up(&t.group, &t.input).await;
            (sink
                .metric("sink_dataverse_token_renewals_total{reason=\"expiring\"}")
                .await
                >= 1.0)
                .then_some(())
        }
    })
    .await
    .unwrap();
    let contacts = admin.contacts().await;
    for c in &written {
        assert_contact(&contacts[&c.customer_id], c);
    }
    assert_eq!(
        sink.metric("sink_dataverse_retries_total{class=\"unauthorized\"}")
            .await,
        0.0
    );
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"dead_lettered\"}")
            .await,
        0.0
    );
    sink.stop().await;

    // A token revoked before it expires: Dataverse answers 401, the sink renews once and resends.
    let t = env.topics(2).await;
    let emu = dataverse_emulator::spawn(dataverse_emulator::Config::default())
        .await
        .unwrap();
    let admin = Admin::of(&emu);
    let sink = Sink::start(env.config(&t, &emu)).await;
    let before: Vec<_> = (0..10)
        .map(|i| upsert(&format!("cus_rev{i}"), 100, "Before"))
        .collect();
    env.produce(&t.input, &before).await;
    env.wait_caught_up(&t.group, &t.input).await;
    admin.expire_tokens().await;
    let after: Vec<_> = (0..10)
        .map(|i| upsert(&format!("cus_rev{i}"), 200, "After"))
        .collect();
    env.produce(&t.input, &after).await;
    env.wait_caught_up(&t.group, &t.input).await;

    let contacts = admin.contacts().await;
    for c in &after {
        assert_contact(&contacts[&c.customer_id], c);
    }
    assert_eq!(
        sink.metric("sink_dataverse_token_renewals_total{reason=\"initial\"}")
            .await,
        1.0
    );
    assert_eq!(
        sink.metric("sink_dataverse_token_renewals_total{reason=\"rejected\"}")
            .await,
        1.0
    );
    assert_eq!(
        sink.metric("sink_dataverse_retries_total{class=\"unauthorized\"}")
            .await,
        0.0,
        "a 401 is renewed and resent inside the request, never surfaced as a failure"
    );
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"dead_lettered\"}")
            .await,
        0.0
    );
    let stats = admin.stats().await;
    // Only the requests already carrying the revoked token were refused; one renewal served all.
    let refused = stats["requests_by_status"]["401"].as_u64().unwrap_or(0);
    assert!((1..=8).contains(&refused), "{refused} 401s: {stats}");
    sink.stop().await;
}
