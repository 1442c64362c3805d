//! Optional persistence: the rows and unexpired tokens as one JSON snapshot file, rewritten (to a
//! temporary file, synced, then renamed over the old one) after every write and before the write is
//! answered, so a restart finds everything a client was told succeeded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::auth::TokenRecord;
use crate::store::StoreSnapshot;

/// The snapshot file's content.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// Rows and the version counter.
    pub store: StoreSnapshot,
    /// Unexpired tokens, so clients keep working across a restart as they would with Entra ID.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenRecord>,
}

/// Writes snapshots in order: a snapshot taken after ticket `n` holds every change made before ticket
/// `n`, so a writer that finds a newer snapshot already on disk has nothing to do.
#[derive(Debug)]
pub struct Persister {
    path: PathBuf,
    tickets: AtomicU64,
    written: tokio::sync::Mutex<u64>,
}

impl Persister {
    /// A persister for a file.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            tickets: AtomicU64::new(0),
            written: tokio::sync::Mutex::new(0),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the snapshot; `None` when the file does not exist yet.
    pub fn load(path: &Path) -> anyhow::Result<Option<Snapshot>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("persist file {} is not a valid snapshot: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!(
                "cannot read persist file {}: {e}",
                path.display()
            )),
        }
    }

    /// Takes a ticket; take it after changing the state and before taking the snapshot.
    pub fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Writes a snapshot unless a newer one is already on disk.
    pub async fn write(&self, ticket: u64, bytes: Vec<u8>) -> std::io::Result<()> {
        let mut written = self.written.lock().await;
        if *written >= ticket {
            return Ok(());
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut file = tokio::fs::File::create(&tmp).await?;
        file.write_all(&bytes).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, &self.path).await?;
        *written = ticket;
        Ok(())
    }
}
