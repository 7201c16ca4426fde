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
use crate::snapshot::{ProcessSettings, Snapshot};
use crate::store::{Objects, StoreFile};
use crate::worker::{ControlMsg, WorkerHandle};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where resources come from (`deployment.config_provider`).
pub(super) enum Provider {
    /// `config.toml`; the Admin API only reads.
    File,
    /// The embedded store; the Admin API changes it.
    Store(StoreFile),
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
}

impl Plane {
    /// SIGHUP or a changed file: the `[gateway]` settings again, and with the file provider
    /// the resources too. Keeps the old config on any error.
    pub(super) fn reload(&mut self) {
        let loaded = load_file(&self.path).and_then(|f| {
            let objects = match self.provider {
                Provider::File => Some(Objects::from_values(&f.values, crate::log::now_secs())?),
                Provider::Store(_) => None,
            };
            let resources = match &objects {
                Some(_) => f.resources.clone(),
                None => Arc::new(self.objects.resources()?),
            };
            Ok((f.gateway, resources, objects))
        });
        let result = loaded.and_then(|(gateway, resources, objects)| {
            let s = self.compile(&gateway, &resources)?;
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

    /// One Admin API request. A change is answered once it is stored and every worker
    /// serves it (read-your-writes).
    pub(super) fn admin(&mut self, req: &AdminRequest) -> AdminResponse {
        let writable = match self.provider {
            Provider::File => Err("the configuration comes from the config file (deployment.config_provider = \"file\"): change the file, or use config_provider = \"store\" to change it here"),
            Provider::Store(_) => Ok(()),
        };
        let (objects, reply, what) =
            match decide(&self.objects, req, writable, crate::log::now_secs()) {
                Decision::Reply(r) => return r,
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
                return AdminResponse::error(400, &format!("invalid configuration: {msg}"));
            }
        };
        if let Provider::Store(file) = &self.provider {
            if let Err(e) = file.save(&objects) {
                self.health.abort();
                crate::error!("admin: {what} not stored: {e}");
                return AdminResponse::error(500, &format!("the change could not be stored: {e}"));
            }
        }
        self.objects = *objects;
        self.publish(s);
        crate::info!(
            "admin: {what} by {} (store revision {}, config version {})",
            req.who,
            self.objects.revision,
            self.snapshot.version
        );
        reply
    }

    /// Compiles the next version (resolving node host names as needed).
    fn compile(
        &mut self,
        gateway: &GatewayConfig,
        resources: &Resources,
    ) -> Result<Snapshot, ConfigError> {
        let version = self.snapshot.version + 1;
        compile(
            gateway,
            resources,
            &mut Names::default(),
            version,
            &mut self.health,
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
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.workers.iter().any(|w| w.mailbox.applied() < s.version)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.snapshot = s;
    }

    /// Stops the prober and the workers (in-flight requests get `grace`).
    pub(super) fn stop(self, grace: Duration) {
        self.prober.mailbox.push(ProberMsg::Shutdown);
        for h in &self.workers {
            h.mailbox.send(ControlMsg::Shutdown { grace });
        }
        for h in self.workers {
            let _ = h.thread.join();
        }
    }
}
