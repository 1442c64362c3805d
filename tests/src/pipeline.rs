//! The whole pipeline as a user runs it: broker, registry, Dataverse emulator, gateway, enricher
//! and sink, each a real process on its own free port, wired together with topic and group names
//! no other test uses. Any stage can be killed (SIGKILL) and started again, for fault tests, and
//! the consuming stages can run several members of their group (`start_member`).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use anyhow::Context;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::{Service, TestEnv, free_port, unique, wait_until};

/// The webhook signing secret the pipeline's gateway is configured with.
pub const WEBHOOK_SECRET: &str = "whsec_pipeline_test_secret";

/// A stage of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Gateway,
    Enricher,
    Sink,
}

impl Stage {
    fn binary(self) -> &'static str {
        match self {
            Stage::Gateway => "gateway",
            Stage::Enricher => "enricher",
            Stage::Sink => "sink-dataverse",
        }
    }
}

/// The per-run names that keep concurrent pipelines apart.
#[derive(Debug, Clone)]
pub struct Names {
    pub events_topic: String,
    pub customers_topic: String,
    pub enricher_group: String,
    pub sink_group: String,
}

#[derive(Debug)]
pub struct Pipeline {
    pub env: TestEnv,
    pub names: Names,
    pub emulator: Service,
    emulator_port: u16,
    /// Each member's ops (and, for the gateway, webhook) port; member 0 is the stage itself.
    ports: HashMap<(Stage, usize), u16>,
    services: HashMap<(Stage, usize), Service>,
    /// Members that join their group without static membership (see [`Pipeline::start_dynamic_member`]).
    dynamic: HashSet<(Stage, usize)>,
    http: reqwest::Client,
    /// Set for every stage after the pipeline's own settings (so it may override them).
    extra_env: Vec<(String, String)>,
}

impl Pipeline {
    /// Starts every process and waits until each stage reports ready.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Vec::new()).await
    }

    /// Like [`Pipeline::start`], with `extra_env` set for every stage (e.g.
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`), also when a stage is started again.
    pub async fn start_with(extra_env: Vec<(String, String)>) -> anyhow::Result<Self> {
        let env = TestEnv::start().await?;
        let names = Names {
            events_topic: unique("stripe.events"),
            customers_topic: unique("customers.normalized"),
            enricher_group: unique("enricher"),
            sink_group: unique("sink"),
        };
        let emulator_port = free_port();
        let emulator = Service::start(
            "dataverse-emulator",
            &["--listen".into(), format!("127.0.0.1:{emulator_port}")],
            &[],
            SocketAddr::from(([127, 0, 0, 1], emulator_port)),
        )
        .await?;
        let mut pipeline = Pipeline {
            env,
            names,
            emulator,
            emulator_port,
            ports: HashMap::new(),
            services: HashMap::new(),
            dynamic: HashSet::new(),
            http: reqwest::Client::new(),
            extra_env,
        };
        for stage in [Stage::Gateway, Stage::Enricher, Stage::Sink] {
            pipeline.start_stage(stage).await?;
        }
        Ok(pipeline)
    }

    fn port(&mut self, stage: Stage, member: usize) -> u16 {
        *self.ports.entry((stage, member)).or_insert_with(free_port)
    }

    /// The base URL of a stage's HTTP listener (the gateway's webhook and ops port, the other
    /// stages' ops port).
    pub fn url(&self, stage: Stage) -> String {
        format!("http://{}", self.ops(stage, 0))
    }

    /// The ops address of member `member` of a stage (0 is the first).
    pub fn ops(&self, stage: Stage, member: usize) -> SocketAddr {
        let port = self.ports.get(&(stage, member)).copied().unwrap_or(0);
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    pub fn emulator_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.emulator_port)
    }

    /// The environment a member of `stage` runs with.
    pub fn stage_env(&self, stage: Stage, member: usize) -> Vec<(String, String)> {
        let n = &self.names;
        let addr = self.ops(stage, member).to_string();
        let mut env = vec![
            (
                "KAFKA_BOOTSTRAP_SERVERS".to_string(),
                self.env.broker.bootstrap_servers(),
            ),
            ("SCHEMA_REGISTRY_URL".to_string(), self.env.registry.url()),
            (
                "RUST_LOG".to_string(),
                std::env::var("PIPELINE_LOG").unwrap_or_else(|_| "info,rdkafka=warn".into()),
            ),
        ];
        let set =
            |env: &mut Vec<(String, String)>, k: &str, v: &str| env.push((k.to_string(), v.to_string()));
        match stage {
            Stage::Gateway => {
                set(&mut env, "GATEWAY_LISTEN", &addr);
                set(&mut env, "GATEWAY_TOPIC", &n.events_topic);
                set(&mut env, "GATEWAY_TOPICS__PARTITIONS", "3");
                set(&mut env, "GATEWAY_TOPICS__REPLICATION_FACTOR", "1");
                set(&mut env, "GATEWAY_WEBHOOK__SECRETS", WEBHOOK_SECRET);
            }
            Stage::Enricher => {
                set(&mut env, "ENRICHER_LISTEN", &addr);
                set(&mut env, "ENRICHER_INPUT_TOPIC", &n.events_topic);
                set(&mut env, "ENRICHER_OUTPUT_TOPIC", &n.customers_topic);
                set(&mut env, "ENRICHER_GROUP", &n.enricher_group);
                set(&mut env, "ENRICHER_TOPICS__PARTITIONS", "3");
                set(&mut env, "ENRICHER_TOPICS__REPLICATION_FACTOR", "1");
                // Static membership: a restarted stage takes its partitions back at once (and the
                // local broker mishandles a dynamic member rejoining after a kill).
                if !self.dynamic.contains(&(stage, member)) {
                    set(
                        &mut env,
                        "ENRICHER_INSTANCE_ID",
                        &format!("{}-{}", n.enricher_group, member + 1),
                    );
                }
            }
            Stage::Sink => {
                let emulator = self.emulator_url();
                set(&mut env, "SINK_LISTEN", &addr);
                set(&mut env, "SINK_INPUT_TOPIC", &n.customers_topic);
                set(&mut env, "SINK_GROUP", &n.sink_group);
                set(&mut env, "SINK_TOPICS__REPLICATION_FACTOR", "1");
                if !self.dynamic.contains(&(stage, member)) {
                    set(
                        &mut env,
                        "SINK_INSTANCE_ID",
                        &format!("{}-{}", n.sink_group, member + 1),
                    );
                }
                set(&mut env, "SINK_DATAVERSE__ENVIRONMENT_URL", &emulator);
                set(
                    &mut env,
                    "SINK_DATAVERSE__TOKEN_URL",
                    &format!("{emulator}/pipeline/oauth2/v2.0/token"),
                );
                set(&mut env, "SINK_DATAVERSE__TENANT_ID", "pipeline");
                set(&mut env, "SINK_DATAVERSE__CLIENT_ID", "sink-dataverse");
                set(&mut env, "SINK_DATAVERSE__CLIENT_SECRET", "local-secret");
            }
        }
        env.extend(self.extra_env.iter().cloned());
        env
    }

    /// Starts a stage (again) and waits until its `/readyz` answers 200.
    pub async fn start_stage(&mut self, stage: Stage) -> anyhow::Result<()> {
        self.start_member(stage, 0).await
    }

    /// Starts member `member` of a stage (again; a new member joins the stage's consumer group
    /// with its own static membership id) and waits until its `/readyz` answers 200.
    pub async fn start_member(&mut self, stage: Stage, member: usize) -> anyhow::Result<()> {
        let port = self.port(stage, member);
        let service = Service::start(
            stage.binary(),
            &[],
            &self.stage_env(stage, member),
            SocketAddr::from(([127, 0, 0, 1], port)),
        )
        .await?;
        let url = format!("http://{}/readyz", self.ops(stage, member));
        let http = self.http.clone();
        wait_until(
            &format!("{} #{member} to be ready", stage.binary()),
            Duration::from_secs(90),
            || {
                let request = http.get(&url).send();
                async move { request.await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
            },
        )
        .await
        .with_context(|| service.process.log_tail())?;
        self.services.insert((stage, member), service);
        Ok(())
    }

    /// Starts member `member` of a consuming stage as a dynamic group member (no
    /// `instance_id`), which leaves its group when stopped in order, so the others take its
    /// partitions over at once instead of after the session timeout.
    pub async fn start_dynamic_member(&mut self, stage: Stage, member: usize) -> anyhow::Result<()> {
        self.dynamic.insert((stage, member));
        self.start_member(stage, member).await
    }

    /// Kills a stage with SIGKILL, as a crash would.
    pub fn kill(&mut self, stage: Stage) {
        self.kill_member(stage, 0);
    }

    /// Kills member `member` of a stage with SIGKILL.
    pub fn kill_member(&mut self, stage: Stage, member: usize) {
        if let Some(mut s) = self.services.remove(&(stage, member)) {
            s.process.kill();
        }
    }

    /// Stops member `member` of a stage with SIGTERM, as an orchestrator scaling down would,
    /// and waits up to `grace` for it to leave its group.
    pub fn stop_member(&mut self, stage: Stage, member: usize, grace: Duration) {
        if let Some(mut s) = self.services.remove(&(stage, member)) {
            s.process.terminate(grace);
        }
    }

    /// The members of a stage that are running (started and not killed or stopped), in order.
    pub fn members(&self, stage: Stage) -> Vec<usize> {
        let mut members: Vec<_> = self
            .services
            .keys()
            .filter(|(s, _)| *s == stage)
            .map(|(_, m)| *m)
            .collect();
        members.sort_unstable();
        members
    }

    /// The running process of a stage, for its log.
    pub fn service(&self, stage: Stage) -> Option<&Service> {
        self.services.get(&(stage, 0))
    }

    /// Runs a one-shot command of a stage's binary (`replay …`, `print-config`) with the stage's
    /// environment, and returns its output; fails naming the output when it exits non-zero.
    pub async fn run_command(&self, stage: Stage, args: &[&str]) -> anyhow::Result<String> {
        let mut command = tokio::process::Command::new(crate::workspace_bin(stage.binary())?);
        command.args(args).kill_on_drop(true);
        for (k, v) in self.stage_env(stage, 0) {
            command.env(k, v);
        }
        let output = tokio::time::timeout(Duration::from_secs(120), command.output())
            .await
            .with_context(|| format!("{} {args:?} did not finish", stage.binary()))??;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        anyhow::ensure!(
            output.status.success(),
            "{} {args:?} exited with {}: {text}",
            stage.binary(),
            output.status
        );
        Ok(text)
    }

    /// Replaces the emulator's injected faults (`POST /_admin/faults`; `{}` turns them off).
    pub async fn set_faults(&self, faults: serde_json::Value) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/_admin/faults", self.emulator_url()))
            .json(&faults)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "the emulator refused the faults: {}",
            response.text().await.unwrap_or_default()
        );
        Ok(())
    }

    /// The emulator's counters (`GET /_admin/stats`).
    pub async fn emulator_stats(&self) -> anyhow::Result<serde_json::Value> {
        Ok(self
            .http
            .get(format!("{}/_admin/stats", self.emulator_url()))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Sends a webhook body to the gateway, signed now with [`WEBHOOK_SECRET`].
    pub async fn send_webhook(&self, body: &str) -> anyhow::Result<reqwest::Response> {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        self.send_webhook_with(body, &stripe_signature(WEBHOOK_SECRET, t, body.as_bytes()))
            .await
    }

    /// Sends a webhook body with the given `Stripe-Signature` header.
    pub async fn send_webhook_with(&self, body: &str, signature: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .post(format!("{}/webhooks/stripe", self.url(Stage::Gateway)))
            .header("content-type", "application/json")
            .header("stripe-signature", signature)
            .body(body.to_string())
            .send()
            .await?)
    }

    /// Every row of the emulator's `contacts` table.
    pub async fn contacts(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let body: serde_json::Value = self
            .http
            .get(format!("{}/_admin/tables/contacts", self.emulator_url()))
            .send()
            .await?
            .json()
            .await?;
        Ok(body["value"].as_array().cloned().unwrap_or_default())
    }

    /// The contact whose alternate key is `customer_id`, if it exists.
    pub async fn contact(&self, customer_id: &str) -> anyhow::Result<Option<serde_json::Value>> {
        Ok(self
            .contacts()
            .await?
            .into_iter()
            .find(|c| c["new_stripecustomerid"] == customer_id))
    }
}

/// A `Stripe-Signature` header for `body` at unix time `t`, as Stripe computes it.
pub fn stripe_signature(secret: &str, t: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A `customer.*` event body as Stripe sends it.
pub fn customer_event(event_id: &str, event_type: &str, created: i64, customer: serde_json::Value) -> String {
    serde_json::json!({
        "id": event_id,
        "object": "event",
        "api_version": "2025-04-30.basil",
        "created": created,
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": event_type,
        "data": {"object": customer},
    })
    .to_string()
}
