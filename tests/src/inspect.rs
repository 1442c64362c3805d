//! Looking at what the stages did, the same way in every test: a topic's high watermarks, a
//! group's committed offsets, waiting until a group has committed everything, reading a topic
//! back, and reading a stage's `/metrics`. Every broker query is retried until a deadline (the
//! broker may be restarting in a fault test) and fails naming what it waited for.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::Headers,
};

use crate::{TestEnv, unique, wait_until};

/// How long a query waits for the broker, and a wait for a condition lasts, by default.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// The record's timestamp (milliseconds since the epoch), when it has one.
    pub timestamp: Option<i64>,
    pub payload: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

impl Record {
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.get(key).map(String::as_str)
    }
}

impl TestEnv {
    fn client(&self, group: Option<&str>) -> BaseConsumer {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.broker.bootstrap_servers())
            .set("enable.auto.commit", "false");
        if let Some(g) = group {
            config.set("group.id", g);
        }
        config
            .create()
            .expect("a client for the test broker can be created")
    }

    /// High watermark of every partition of `topic`.
    pub async fn high_watermarks(&self, topic: &str) -> HashMap<i32, i64> {
        wait_until(&format!("the watermarks of {topic}"), DEADLINE, || async {
            let client = self.client(None);
            let topic = topic.to_string();
            tokio::task::spawn_blocking(move || {
                let md = client
                    .fetch_metadata(Some(&topic), Duration::from_secs(10))
                    .ok()?;
                let partitions: Vec<i32> = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                    .unwrap_or_default();
                if partitions.is_empty() {
                    return None;
                }
                partitions
                    .into_iter()
                    .map(|p| {
                        let (_, high) = client.fetch_watermarks(&topic, p, Duration::from_secs(10)).ok()?;
                        Some((p, high))
                    })
                    .collect::<Option<HashMap<i32, i64>>>()
            })
            .await
            .ok()
            .flatten()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The group's committed offsets for `topic` (partitions without a commit are absent).
    pub async fn committed(&self, group: &str, topic: &str) -> HashMap<i32, i64> {
        let partitions: Vec<i32> = self.high_watermarks(topic).await.into_keys().collect();
        wait_until(&format!("the committed offsets of {group}"), DEADLINE, || async {
            let client = self.client(Some(group));
            let (topic, partitions) = (topic.to_string(), partitions.clone());
            tokio::task::spawn_blocking(move || {
                let mut tpl = TopicPartitionList::new();
                for p in partitions {
                    tpl.add_partition(&topic, p);
                }
                let got = client.committed_offsets(tpl, Duration::from_secs(10)).ok()?;
                Some(
                    got.elements()
                        .iter()
                        .filter_map(|e| match e.offset() {
                            Offset::Offset(o) => Some((e.partition(), o)),
                            _ => None,
                        })
                        .collect::<HashMap<i32, i64>>(),
                )
            })
            .await
            .ok()
            .flatten()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until `group` has committed every record `topic` holds now; panics with the last
    /// committed offsets when it does not within [`DEADLINE`].
    pub async fn wait_caught_up(&self, group: &str, topic: &str) {
        if let Err(e) = self.try_wait_caught_up(group, topic).await {
            panic!("{e}");
        }
    }

    /// As [`TestEnv::wait_caught_up`], returning the failure.
    pub async fn try_wait_caught_up(&self, group: &str, topic: &str) -> anyhow::Result<()> {
        self.wait_caught_up_within(group, topic, DEADLINE).await
    }

    /// As [`TestEnv::try_wait_caught_up`], with a deadline of its own (large backlogs).
    pub async fn wait_caught_up_within(
        &self,
        group: &str,
        topic: &str,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        let high = self.high_watermarks(topic).await;
        let last = std::sync::Mutex::new(HashMap::new());
        let outcome = wait_until(
            &format!("group {group} to commit all of {topic}"),
            deadline,
            || async {
                let committed = self.committed(group, topic).await;
                let done = high.iter().all(|(p, h)| *h == 0 || committed.get(p) == Some(h));
                *last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = committed;
                done.then_some(())
            },
        )
        .await;
        outcome.map_err(|e| {
            anyhow::anyhow!(
                "{e}: end {high:?}, committed {:?}",
                last.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
            )
        })
    }

    /// Every record of `topic` from the start to its current end, in offset order per partition
    /// (partitions in order).
    pub async fn read_all(&self, topic: &str) -> Vec<Record> {
        let high = self.high_watermarks(topic).await;
        let client = self.client(Some(&unique("reader")));
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in high.keys() {
                tpl.add_partition_offset(&topic, *p, Offset::Beginning)
                    .expect("a new partition list takes any offset");
            }
            client
                .assign(&tpl)
                .expect("assigning partitions to a fresh reader");
            let total: i64 = high.values().sum();
            // The local broker reads large topics slowly: allow 20 ms a record beyond the deadline.
            let deadline = DEADLINE + Duration::from_millis(20 * u64::try_from(total).unwrap_or(0));
            let mut out = Vec::new();
            let mut next: HashMap<i32, i64> = HashMap::new();
            let start = Instant::now();
            while high.iter().any(|(p, h)| next.get(p).copied().unwrap_or(0) < *h) {
                assert!(
                    start.elapsed() < deadline,
                    "read {} of {total} records of {topic}",
                    out.len()
                );
                let Some(m) = client.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let Ok(m) = m else { continue };
                next.insert(m.partition(), m.offset() + 1);
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    timestamp: m.timestamp().to_millis(),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_string(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
            out.sort_by_key(|r| (r.partition, r.offset));
            out
        })
        .await
        .expect("the reader thread finishes")
    }
}

/// A stage's `/metrics` page, if it answers.
pub async fn scrape(addr: SocketAddr) -> Option<String> {
    let res = reqwest::get(format!("http://{addr}/metrics")).await.ok()?;
    res.status().is_success().then_some(())?;
    res.text().await.ok()
}

/// The value of one series (`name` or `name{labels}`) in a metrics text; 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The value of one series on a stage's `/metrics` page (0 when absent or not answering).
pub async fn metric_at(addr: SocketAddr, series: &str) -> f64 {
    scrape(addr).await.map_or(0.0, |text| metric(&text, series))
}

/// Waits until a series reaches at least `min`; returns its value.
pub async fn wait_metric(addr: SocketAddr, series: &str, min: f64) -> f64 {
    wait_until(&format!("{series} >= {min} at {addr}"), DEADLINE, || async {
        let v = metric(&scrape(addr).await?, series);
        (v >= min).then_some(v)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// An access token from the Dataverse emulator's token endpoint (`<base>/<tenant>/oauth2/v2.0/token`,
/// client credentials), for tools that read it through the Web API.
pub async fn emulator_token(
    http: &reqwest::Client,
    base: &str,
    tenant: &str,
    client_id: &str,
    client_secret: &str,
) -> anyhow::Result<String> {
    let base = base.trim_end_matches('/');
    let answer: serde_json::Value = http
        .post(format!("{base}/{tenant}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", client_secret),
            ("scope", &format!("{base}/.default")),
        ])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    answer["access_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("the token answer has no access_token: {answer}"))
}
