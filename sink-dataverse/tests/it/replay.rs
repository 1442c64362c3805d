//! Redelivering everything (the `replay` subcommand, rewinding the group to the beginning) leaves
//! Dataverse exactly as it was: every change is recognised as already applied or stale, and
//! nothing is written.

use std::process::Command;

use crate::support::{Admin, Env, Sink, delete, upsert};

#[tokio::test(flavor = "multi_thread")]
async fn replaying_from_the_beginning_leaves_dataverse_unchanged() {
    let env = Env::start().await;
    let t = env.topics(3).await;
    let emu = dataverse_emulator::spawn(dataverse_emulator::Config::default())
        .await
        .unwrap();
    let admin = Admin::of(&emu);
    let mut changes = Vec::new();
    for i in 0..30 {
        let id = format!("cus_replay{i:02}");
        changes.push(upsert(&id, 1_760_000_000, &format!("First{i}")));
        changes.push(upsert(&id, 1_760_000_100, &format!("Second{i}")));
        if i % 6 == 0 {
            changes.push(delete(&id, 1_760_000_200));
        }
    }
    env.produce(&t.input, &changes).await;

    let config = env.config(&t, &emu);
    let sink = Sink::start(config.clone()).await;
    env.wait_caught_up(&t.group, &t.input).await;
    sink.stop().await;
    let before = admin.contacts().await;
    let ops_before = admin.stats().await["operations"].clone();
    assert_eq!(before.len(), 30);

    // `sink-dataverse replay`, as an operator runs it (this broker cannot describe groups, so
    // the membership check needs the documented override).
    let bin = harness::workspace_bin("sink-dataverse").unwrap();
    let output = Command::new(bin)
        .args(["replay", "--to-earliest", "--assume-inactive"])
        .envs(env.process_env(&t, &emu, "127.0.0.1:0".parse().unwrap()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("offsets reset"), "{stdout}");
    assert!(env.committed(&t.group, &t.input).await.values().all(|o| *o == 0));

    let sink = Sink::start(config).await;
    env.wait_caught_up(&t.group, &t.input).await;
    let skipped = sink
        .metric("sink_dataverse_writes_total{outcome=\"unchanged\"}")
        .await
        + sink
            .metric("sink_dataverse_writes_total{outcome=\"stale\"}")
            .await;
    assert_eq!(
        skipped as usize,
        changes.len(),
        "every redelivered change was skipped"
    );
    sink.stop().await;

    assert_eq!(
        admin.contacts().await,
        before,
        "rows, etags and modifiedon unchanged"
    );
    let ops_after = admin.stats().await["operations"].clone();
    for kind in ["created", "updated", "deleted"] {
        assert_eq!(
            ops_after[kind], ops_before[kind],
            "{kind}: {ops_before} → {ops_after}"
        );
    }
}
