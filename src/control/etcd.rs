//! The control plane's side of the etcd provider: the first read (retried at start), turning
//! what the watch delivers into objects, writing the Admin API's changes, and holding each
//! write's answer until this gateway's workers serve its revision (read-your-writes).

use super::status::{ConfigStatus, EtcdStatus};
use crate::admin::AdminResponse;
use crate::config::EtcdConfig;
use crate::etcd::{layout, Client, EtcdError, Kv, WatchEvent};
use crate::store::Objects;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a write's answer waits for the watch before it is sent anyway (the write is in
/// etcd; this gateway is behind and says so in its log).
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// The provider's state on the control thread.
pub(super) struct EtcdSide {
    /// For writes (the watcher has its own client).
    client: Client,
    pub(super) config: EtcdConfig,
    pending: Vec<Pending>,
}

/// An answer waiting for its revision.
struct Pending {
    revision: i64,
    reply: AdminResponse,
    to: mpsc::Sender<AdminResponse>,
    deadline: Instant,
}

impl EtcdSide {
    /// Connects and reads everything under the prefix, retrying `startup_retry` times
    /// (a second apart) before giving up: the gateway does not start without its config.
    pub(super) fn open(config: &EtcdConfig) -> Result<(EtcdSide, Objects), String> {
        let mut client = Client::new(config).map_err(|e| format!("invalid config: {e}"))?;
        let mut attempt = 0;
        let (revision, kvs) = loop {
            match client.range_prefix() {
                Ok(r) => break r,
                Err(e) if attempt < config.startup_retry => {
                    crate::warn!(
                        "etcd: {e}; retrying ({} of {})",
                        attempt + 1,
                        config.startup_retry
                    );
                    attempt += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => {
                    return Err(format!(
                        "cannot read the configuration from etcd (deployment.etcd.host {:?}): {e}",
                        config.host
                    ))
                }
            }
        };
        let objects = objects_from(&config.prefix, revision, &kvs);
        crate::info!(
            "etcd: {} objects under {} at revision {revision} (from {})",
            objects.count(),
            config.prefix,
            client.endpoint()
        );
        Ok((
            EtcdSide {
                client,
                config: config.clone(),
                pending: Vec::new(),
            },
            objects,
        ))
    }

    /// The endpoint in use.
    pub(super) fn endpoint(&self) -> &str {
        self.client.endpoint()
    }

    /// A fresh client for the watcher.
    pub(super) fn watcher_client(&self) -> Client {
        Client::new(&self.config).expect("checked at open")
    }

    /// Writes what `next` changes against `old`; returns the revision of the last write.
    /// A POST's id comes from etcd (`reserve_id`), so ids are unique across gateways.
    pub(super) fn write(&mut self, old: &Objects, next: &Objects) -> Result<i64, EtcdError> {
        let prefix = self.config.prefix.clone();
        let mut revision = 0;
        for (kind, id, object) in old.changes_to(next) {
            let key = layout::key(&prefix, kind, &id);
            revision = match object {
                Some(o) => self.client.put(&key, &layout::encode(kind, o))?,
                None => self.client.delete(&key)?,
            };
        }
        Ok(revision)
    }

    /// A revision no other gateway gets, for a POST's id.
    pub(super) fn reserve_id(&mut self) -> Result<i64, EtcdError> {
        self.client.new_id()
    }

    /// Holds `reply` until `revision` is served.
    pub(super) fn answer_at(
        &mut self,
        revision: i64,
        reply: AdminResponse,
        to: mpsc::Sender<AdminResponse>,
    ) {
        self.pending.push(Pending {
            revision,
            reply,
            to,
            deadline: Instant::now() + ANSWER_WAIT,
        });
    }

    /// Sends the answers whose revision is served (`served`), and those that waited too long.
    pub(super) fn answer(&mut self, served: i64) {
        let now = Instant::now();
        self.pending.retain(|p| {
            if p.revision <= served {
                let _ = p.to.send(p.reply.clone());
                return false;
            }
            if now >= p.deadline {
                crate::warn!(
                    "etcd: revision {} is written but not yet seen by this gateway's watch; answering anyway",
                    p.revision
                );
                let _ = p.to.send(p.reply.clone());
                return false;
            }
            true
        });
    }

    pub(super) fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Objects from a full read. An object that does not pass its schema is left out (logged):
/// the rest is served.
pub(super) fn objects_from(prefix: &str, revision: i64, kvs: &[Kv]) -> Objects {
    let mut objects = Objects::default();
    objects.revision = revision.max(0) as u64;
    for kv in kvs {
        apply_kv(prefix, &mut objects, kv, false);
    }
    objects
}

/// Applies watch events; returns whether any object changed.
pub(super) fn apply(
    prefix: &str,
    objects: &mut Objects,
    revision: i64,
    events: &[WatchEvent],
) -> bool {
    let mut changed = false;
    for e in events {
        changed |= apply_kv(prefix, objects, &e.kv, e.delete);
    }
    objects.revision = objects.revision.max(revision.max(0) as u64);
    changed
}

fn apply_kv(prefix: &str, objects: &mut Objects, kv: &Kv, delete: bool) -> bool {
    let Some((kind, id)) = layout::parse_key(prefix, &kv.key) else {
        return false;
    };
    if delete {
        return objects.remove(kind, &id).is_some();
    }
    let checked = layout::decode(kind, &id, kv).and_then(|o| {
        crate::admin::schemas::check_object(kind, &o.value)?;
        Ok(o)
    });
    match checked {
        Ok(o) => {
            objects.set(kind, &id, o);
            true
        }
        Err(e) => {
            crate::error!(
                "etcd: {} ignored (revision {}): {e}",
                kv.key,
                kv.mod_revision
            );
            // What was there before is gone in etcd: serve neither.
            objects.remove(kind, &id).is_some()
        }
    }
}

/// Records reachability in the shared status (and the log, once per change).
pub(super) fn set_reachable(
    status: &ConfigStatus,
    reachable: bool,
    endpoint: Option<String>,
    error: Option<String>,
) {
    status.update(|s| {
        let e = s.etcd.get_or_insert_with(EtcdStatus::default);
        if reachable {
            e.error = None;
            e.unreachable_since = None;
        } else if e.reachable || e.unreachable_since.is_none() {
            e.unreachable_since = Some(crate::log::now_secs());
        }
        e.reachable = reachable;
        if let Some(ep) = endpoint {
            e.endpoint = ep;
        }
        if error.is_some() {
            e.error = error;
        }
    });
}
