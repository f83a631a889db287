//! Where identity numbers come from: the agent's own state dir on a cluster
//! of one, etcd on a cluster of several, so every node gives a label set the
//! same number. In etcd a label set owns `weir/identities/v1/labels/<set>`
//! and its number `weir/identities/v1/id/<n>`; both are created in one
//! transaction that fails if either exists, so two nodes racing for a number
//! cannot both win.

use std::path::{Path, PathBuf};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use weir_policy::identity::{cluster_range, IdentityLabels, LocalAllocator};

const PREFIX: &str = "weir/identities/v1/";
/// Races lost in a row before giving up on a label set.
const MAX_ATTEMPTS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("etcd at {endpoints}: {message}")]
    Etcd { endpoints: String, message: String },
    #[error("{0}")]
    State(String),
    #[error("no identity number is free (the 24-bit space is used up)")]
    Exhausted,
}

pub enum Allocator {
    Local {
        file: PathBuf,
        state: LocalAllocator,
    },
    Etcd {
        endpoints: Vec<String>,
        client: Box<Client>,
        runtime: tokio::runtime::Handle,
        /// This cluster's numbers (its id in bits 16-23 in a mesh).
        range: std::ops::RangeInclusive<u32>,
    },
    /// etcd was away when the agent started: the numbers it last read from
    /// it (kept in the state dir). A label set it never numbered waits for etcd.
    Remembered {
        endpoints: Vec<String>,
        numbers: std::collections::BTreeMap<String, u32>,
    },
}

impl std::fmt::Debug for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Allocator {
    /// The state dir's allocator (restored from `identities.json`).
    pub fn local(state_dir: &Path) -> Result<Self, IdentityError> {
        let file = state_dir.join("identities.json");
        let state = match std::fs::read_to_string(&file) {
            Ok(text) => {
                serde_json::from_str(&text).map_err(|e| IdentityError::State(format!("{}: {e}", file.display())))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LocalAllocator::default(),
            Err(e) => return Err(IdentityError::State(format!("{}: {e}", file.display()))),
        };
        Ok(Self::Local { file, state })
    }

    /// Connects to etcd; call from a blocking thread of a tokio runtime.
    /// `cluster_id` is 0 outside a mesh.
    pub fn etcd(endpoints: &[String], cluster_id: u8, runtime: tokio::runtime::Handle) -> Result<Self, IdentityError> {
        let client = crate::kvstore::connect_etcd(endpoints, &runtime)?;
        Ok(Self::Etcd {
            endpoints: endpoints.to_vec(),
            client: Box::new(client),
            runtime,
            range: cluster_range(cluster_id),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Allocator::Local { file, .. } => format!("local ({})", file.display()),
            Allocator::Etcd { endpoints, .. } => format!("etcd ({})", endpoints.join(",")),
            Allocator::Remembered { endpoints, .. } => {
                format!("etcd ({}), away: numbers remembered from the state dir", endpoints.join(","))
            }
        }
    }

    /// The number of `labels`, allocated if it has none yet.
    pub fn allocate(&mut self, labels: &IdentityLabels) -> Result<u32, IdentityError> {
        match self {
            Allocator::Local { file, state } => {
                let before = state.identities.len();
                let id = state.allocate(labels).ok_or(IdentityError::Exhausted)?;
                if state.identities.len() != before {
                    let text = serde_json::to_string_pretty(&state).map_err(|e| IdentityError::State(e.to_string()))?;
                    let tmp = file.with_extension("json.tmp");
                    std::fs::write(&tmp, text)
                        .and_then(|()| std::fs::rename(&tmp, &*file))
                        .map_err(|e| IdentityError::State(format!("{}: {e}", file.display())))?;
                }
                Ok(id)
            }
            Allocator::Remembered { endpoints, numbers } => {
                numbers.get(&labels.to_string()).copied().ok_or_else(|| IdentityError::Etcd {
                    endpoints: endpoints.join(","),
                    message: format!("away, and no number is remembered for the label set {labels}"),
                })
            }
            Allocator::Etcd { endpoints, client, runtime, range } => {
                let fail = |e: etcd_client::Error| IdentityError::Etcd {
                    endpoints: endpoints.join(","),
                    message: e.to_string(),
                };
                runtime
                    .block_on(etcd_allocate(client, labels, range.clone()))
                    .map_err(fail)?
                    .ok_or(IdentityError::Exhausted)
            }
        }
    }
}

fn parse_number(value: &[u8]) -> Option<u32> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

async fn etcd_allocate(
    client: &mut Client,
    labels: &IdentityLabels,
    range: std::ops::RangeInclusive<u32>,
) -> Result<Option<u32>, etcd_client::Error> {
    let set = labels.to_string();
    let labels_key = format!("{PREFIX}labels/{set}");
    for _ in 0..MAX_ATTEMPTS {
        let current = client.get(labels_key.as_str(), None).await?;
        if let Some(number) = current.kvs().first().and_then(|kv| parse_number(kv.value())) {
            return Ok(Some(number));
        }
        let used = client.get(format!("{PREFIX}id/"), Some(GetOptions::new().with_prefix().with_keys_only())).await?;
        let taken: std::collections::BTreeSet<u32> = used
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok()?.strip_prefix(&format!("{PREFIX}id/"))?.parse().ok())
            .collect();
        let Some(number) = range.clone().find(|n| !taken.contains(n)) else {
            return Ok(None);
        };
        let id_key = format!("{PREFIX}id/{number}");
        let txn = Txn::new()
            .when([
                Compare::create_revision(labels_key.as_str(), CompareOp::Equal, 0),
                Compare::create_revision(id_key.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(labels_key.as_str(), number.to_string(), None),
                TxnOp::put(id_key.as_str(), set.as_str(), None),
            ]);
        if client.txn(txn).await?.succeeded() {
            return Ok(Some(number));
        }
        // Another node took the number or the set first: look again.
    }
    Ok(None)
}
