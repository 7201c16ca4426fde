//! What the control loop changes, and how a change goes live: compile, store (durably, with
//! the store provider), publish to the prober and every worker, and wait until every worker
//! serves it. A change that does not compile reaches nothing.

use super::{compile, Resources};
use crate::admin::api::{decide, Decision};
use crate::admin::{AdminRequest, AdminResponse};
use crate::config::{ConfigError, GatewayConfig};
use crate::dns::Names;
use crate::health::prober::{ProberHandle, ProberMsg};
use crate::health::Registry as HealthRegistry;
use crate::resources::load_file;
use crate::snapshot::{CompileCache, ProcessSettings, Snapshot};
use crate::store::{Objects, StoreFile};
use crate::worker::{ControlMsg, WorkerHandle};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::etcd::EtcdSide;
use super::status::ConfigStatus;
use crate::etcd::Update;

/// Where resources come from (`deployment.config_provider`).
pub(super) enum Provider {
    /// `config.toml`; the Admin API only reads.
    File,
    /// The embedded store; the Admin API changes it.
    Store(StoreFile),
    /// An etcd cluster; the Admin API writes there, the watch brings every change.
    Etcd(Box<EtcdSide>),
}

impl Provider {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Provider::File => "file",
            Provider::Store(_) => "store",
            Provider::Etcd(_) => "etcd",
        }
    }
}

/// The control plane's state after start.
pub(super) struct Plane {
    pub(super) path: PathBuf,
    /// The process settings the gateway started with.
    pub(super) running: ProcessSettings,
    pub(super) provider: Provider,
    /// The objects being served.
    pub(super) objects: Objects,
    /// The `[gateway]` section in force.
    pub(super) gateway: GatewayConfig,
    pub(super) snapshot: Arc<Snapshot>,
    pub(super) workers: Vec<WorkerHandle>,
    pub(super) health: HealthRegistry,
    pub(super) prober: ProberHandle,
    /// What the control API's `/v1/config` reports.
    pub(super) status: Arc<ConfigStatus>,
    /// What the last compilation made, for the next to take again.
    pub(super) cache: CompileCache,
    /// The metrics (reloads and how long they took to apply).
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    /// When the version being made started compiling.
    pub(super) compile_started: Option<std::time::Instant>,
}

impl Plane {
    /// SIGHUP or a changed file: the `[gateway]` settings again, and with the file provider
    /// the resources too. Keeps the old config on any error.
    pub(super) fn reload(&mut self) {
        let loaded = load_file(&self.path).and_then(|f| {
            let objects = match self.provider {
                Provider::File => Some(Objects::from_values(&f.values, crate::log::now_secs())?),
                Provider::Store(_) | Provider::Etcd(_) => None,
            };
            // After the compiler (whose messages speak the file's terms), as `check` does.
            let schemas = match objects {
                Some(_) => f.check_schemas(),
                None => Ok(()),
            };
            if objects.is_none() && f.values.values().any(|v| !v.is_empty()) {
                crate::info!(
                    "{}'s resources are not read again with config_provider = \"{}\": change them through the Admin API or `shardgate import` (or use config_provider = \"file\")",
                    self.path.display(),
                    self.provider.name()
                );
            }
            let resources = match &objects {
                Some(_) => f.resources.clone(),
                None => Arc::new(self.objects.resources()?),
            };
            Ok((f.gateway, resources, objects, schemas))
        });
        let result = loaded.and_then(|(gateway, resources, objects, schemas)| {
            let s = self.compile(&gateway, &resources)?;
            schemas?;
            Ok((s, gateway, objects))
        });
        match result {
            Ok((s, gateway, objects)) => {
                for field in self.running.changed_in(&s.process) {
                    crate::warn!("{field} changed: it takes effect at the next restart (the running value is kept)");
                }
                self.gateway = gateway;
                if let Some(objects) = objects {
                    self.objects = objects;
                }
                self.publish(s);
                crate::info!(
                    "config reloaded: version {} ({} routes, store revision {}), live on all workers",
                    self.snapshot.version,
                    self.snapshot.router.len(),
                    self.objects.revision
                );
            }
            Err(e) => {
                self.health.abort();
                crate::error!(
                    "config reload refused, version {} keeps serving: {e}",
                    self.snapshot.version
                );
            }
        }
    }

    /// One Admin API request, answered on `to`. A change is answered once it is stored and
    /// every worker serves it (read-your-writes); with etcd, once the watch has brought it.
    pub(super) fn admin(&mut self, req: &AdminRequest, to: mpsc::Sender<AdminResponse>) {
        let writable = match self.provider {
            Provider::File => Err("the configuration comes from the config file (deployment.config_provider = \"file\"): change the file, or use config_provider = \"store\" to change it here"),
            Provider::Store(_) | Provider::Etcd(_) => Ok(()),
        };
        if let (Provider::Etcd(etcd), "POST") = (&mut self.provider, req.method.as_str()) {
            // POST's id is a revision of etcd's (APISIX's `gen_id`): unique across gateways.
            match etcd.reserve_id() {
                Ok(rev) => self.objects.last_generated = (rev as u64).saturating_sub(1),
                Err(e) => {
                    let _ = to.send(AdminResponse::error(503, &e.to_string()));
                    return;
                }
            }
        }
        let (objects, reply, what) =
            match decide(&self.objects, req, writable, crate::log::now_secs()) {
                Decision::Reply(r) => {
                    let _ = to.send(r);
                    return;
                }
                Decision::Write {
                    objects,
                    reply,
                    what,
                } => (objects, reply, what),
            };
        let compiled = objects
            .resources()
            .and_then(|r| self.compile(&self.gateway.clone(), &r));
        let s = match compiled {
            Ok(s) => s,
            Err(e) => {
                self.health.abort();
                let msg = e.to_string();
                let msg = msg.strip_prefix("invalid config: ").unwrap_or(&msg);
                let _ = to.send(AdminResponse::error(
                    400,
                    &format!("invalid configuration: {msg}"),
                ));
                return;
            }
        };
        match &mut self.provider {
            Provider::Etcd(etcd) => {
                // Not applied here: the watch brings it back, to this gateway as to the others.
                self.health.abort();
                match etcd.write(&self.objects, &objects) {
                    Ok(revision) => {
                        crate::info!("admin: {what} by {} (etcd revision {revision})", req.who);
                        etcd.answer_at(revision, reply, to);
                    }
                    Err(e) => {
                        crate::error!("admin: {what} not written to etcd: {e}");
                        let _ = to.send(AdminResponse::error(503, &e.to_string()));
                    }
                }
                return;
            }
            Provider::Store(file) => {
                if let Err(e) = file.save_change(&self.objects, &objects) {
                    self.health.abort();
                    crate::error!("admin: {what} not stored: {e}");
                    let _ = to.send(AdminResponse::error(
                        500,
                        &format!("the change could not be stored: {e}"),
                    ));
                    return;
                }
            }
            Provider::File => {}
        }
        self.objects = *objects;
        self.publish(s);
        crate::info!(
            "admin: {what} by {} (store revision {}, config version {})",
            req.who,
            self.objects.revision,
            self.snapshot.version
        );
        let _ = to.send(reply);
    }

    /// Takes what the etcd watcher delivered (and whatever else it has delivered since, so a
    /// burst compiles once); returns other events met on the way, for the loop to handle.
    pub(super) fn etcd(
        &mut self,
        first: Update,
        more: &mpsc::Receiver<super::Event>,
    ) -> Vec<super::Event> {
        let Provider::Etcd(etcd) = &mut self.provider else {
            return Vec::new();
        };
        let prefix = etcd.config.prefix.clone();
        let mut changed = false;
        let mut others = Vec::new();
        let mut next = Some(first);
        while let Some(update) = next.take() {
            match update {
                Update::Full { revision, kvs } => {
                    self.objects = super::etcd::objects_from(&prefix, revision, &kvs);
                    changed = true;
                }
                Update::Changes { revision, events } => {
                    changed |= super::etcd::apply(&prefix, &mut self.objects, revision, &events);
                }
                Update::Down(e) => {
                    crate::error!(
                        "etcd: {e}; config version {} (revision {}) keeps serving until etcd is back",
                        self.snapshot.version,
                        self.objects.revision
                    );
                    super::etcd::set_reachable(&self.status, false, None, Some(e));
                }
                Update::Up(endpoint) => {
                    crate::info!(
                        "etcd: watching again through {endpoint} from revision {}",
                        self.objects.revision + 1
                    );
                    super::etcd::set_reachable(&self.status, true, Some(endpoint), None);
                }
            }
            // A burst is taken whole; other events wait their turn.
            while let Ok(ev) = more.try_recv() {
                match ev {
                    super::Event::Etcd(u) => {
                        next = Some(u);
                        break;
                    }
                    other => others.push(other),
                }
            }
        }
        if changed {
            let compiled = self
                .objects
                .resources()
                .and_then(|r| self.compile(&self.gateway.clone(), &r));
            match compiled {
                Ok(s) => {
                    self.status.update(|st| st.refused = None);
                    self.publish(s);
                    crate::info!(
                        "etcd: revision {} live on all workers (config version {}, {} routes)",
                        self.objects.revision,
                        self.snapshot.version,
                        self.snapshot.router.len()
                    );
                }
                Err(e) => {
                    self.health.abort();
                    crate::error!(
                        "etcd: revision {} refused, config version {} keeps serving: {e}",
                        self.objects.revision,
                        self.snapshot.version
                    );
                    self.status.update(|st| st.refused = Some(e.to_string()));
                }
            }
        }
        self.answer_pending();
        others
    }

    /// Answers the etcd writes this gateway now serves (or that waited too long).
    pub(super) fn answer_pending(&mut self) {
        if let Provider::Etcd(etcd) = &mut self.provider {
            etcd.answer(self.objects.revision as i64);
        }
    }

    /// Whether writes wait for their revision (the loop then wakes up more often).
    pub(super) fn waiting(&self) -> bool {
        matches!(&self.provider, Provider::Etcd(e) if e.waiting())
    }

    /// Compiles the next version (resolving node host names as needed).
    fn compile(
        &mut self,
        gateway: &GatewayConfig,
        resources: &Resources,
    ) -> Result<Snapshot, ConfigError> {
        let version = self.snapshot.version + 1;
        self.compile_started = Some(std::time::Instant::now());
        compile(
            gateway,
            resources,
            &mut Names::default(),
            version,
            &mut self.health,
            &mut self.cache,
        )
    }

    /// Hands `s` to the prober and every worker, and waits until every worker serves it.
    fn publish(&mut self, s: Snapshot) {
        let targets = self.health.commit();
        let s = Arc::new(s);
        self.prober
            .mailbox
            .push(ProberMsg::Update(targets, s.clone()));
        for w in &self.workers {
            w.mailbox.send(ControlMsg::Snapshot(s.clone()));
        }
        let revision = self.objects.revision;
        self.status.update(|st| {
            st.config_version = s.version;
            st.revision = revision;
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.workers.iter().any(|w| w.mailbox.applied() < s.version)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.snapshot = s;
        let m = &self.metrics;
        crate::metrics::bump(&m.reloads, 1);
        if let Some(t) = self.compile_started.take() {
            let us = t.elapsed().as_micros() as u64;
            m.last_apply_us
                .store(us, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Stops the prober and the workers (in-flight requests get `grace`). `handover`: the
    /// listening sockets are another process's too (an upgrade), and must keep listening.
    pub(super) fn stop(self, grace: Duration, handover: bool) {
        self.prober.mailbox.push(ProberMsg::Shutdown);
        for h in &self.workers {
            h.mailbox.send(ControlMsg::Shutdown { grace, handover });
        }
        for h in self.workers {
            let _ = h.thread.join();
        }
    }
}
