//! Where the configuration comes from and whether it is current, for the control API's
//! `GET /v1/config`: written by the control thread, read by the prober thread that serves
//! the control API (a mutex, off the request path).

use serde::Serialize;
use std::sync::{Arc, Mutex};

/// The shared status.
#[derive(Debug, Default)]
pub struct ConfigStatus(Mutex<Status>);

/// What `/v1/config` shows.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Status {
    /// `file`, `store` or `etcd`.
    pub provider: &'static str,
    /// The snapshot version every worker serves.
    pub config_version: u64,
    /// The store's (or etcd's) revision that version was compiled from.
    pub revision: u64,
    /// Set when the newest resources did not compile: the previous version keeps serving.
    pub refused: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdStatus>,
}

/// The etcd cluster as this gateway sees it.
#[derive(Debug, Default, Clone, Serialize)]
pub struct EtcdStatus {
    pub reachable: bool,
    /// The endpoint watched (or last tried).
    pub endpoint: String,
    /// Why it is unreachable, and since when (Unix seconds).
    pub error: Option<String>,
    pub unreachable_since: Option<i64>,
}

impl ConfigStatus {
    pub fn new(status: Status) -> Arc<ConfigStatus> {
        Arc::new(ConfigStatus(Mutex::new(status)))
    }

    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn get(&self) -> Status {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
