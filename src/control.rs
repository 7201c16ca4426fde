//! The control plane: one thread (the main thread) owns the configuration. It loads and
//! compiles it, binds the listeners, starts the workers, and then waits for events: SIGHUP or
//! a changed config file reloads, SIGTERM/SIGINT shuts down gracefully.
//!
//! A reload compiles a new snapshot completely before any worker sees it; if anything is wrong
//! the new config is refused with the reason logged and every worker keeps the old one. A
//! good snapshot is posted to each worker's lock-free mailbox; workers switch between
//! requests and report the version they switched to.

use crate::config::{ConfigError, GatewayConfig};
use crate::dns::Names;
use crate::health::prober::{self, ProberHandle, ProberMsg};
use crate::health::Registry as HealthRegistry;
use crate::log::access::AccessLogConfig;
use crate::resources::{load_file, Resources, Source, Store};
use crate::snapshot::{ProcessSettings, Snapshot};
use crate::worker::{self, ControlMsg, Listeners, RuntimeOptions, WorkerHandle, WorkerSpec};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Loads and validates a config file the way `run` would (for `shardgate check`).
pub fn check(path: &Path) -> Result<Snapshot, ConfigError> {
    let file = load_file(path)?;
    compile(
        &file.gateway,
        &file.resources,
        &mut Names::default(),
        1,
        &mut HealthRegistry::default(),
    )
}

/// Compiles settings and resources into a snapshot, resolving the node host names the
/// compilation asks for (blocking DNS, here on the control thread; see `dns.rs`).
pub fn compile(
    gateway: &GatewayConfig,
    resources: &Resources,
    names: &mut Names,
    version: u64,
    health: &mut HealthRegistry,
) -> Result<Snapshot, ConfigError> {
    match Snapshot::compile(gateway, resources, names, version, health) {
        Err(ConfigError::Unresolved(missing)) => {
            names.resolve(&missing)?;
            Snapshot::compile(gateway, resources, names, version, health)
        }
        done => done,
    }
}

fn file_digest(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

enum Event {
    Signal(i32),
}

/// Runs the gateway until it is told to stop. Returns the process exit code.
pub fn run(path: PathBuf) -> i32 {
    // The file provider: process settings and resources from config.toml.
    let file = match load_file(&path) {
        Ok(f) => f,
        Err(e) => {
            crate::error!("{e}");
            return 1;
        }
    };
    // Signal handlers first: a SIGHUP or SIGTERM that arrives while the gateway starts must be
    // queued, not take the default action (terminate).
    let (tx, rx) = mpsc::channel::<Event>();
    let mut signals = match signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            crate::error!("cannot install signal handlers: {e}");
            return 1;
        }
    };
    std::thread::Builder::new()
        .name("shardgate-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })
        .expect("signal thread");

    let mut health = HealthRegistry::default();
    let mut store = Store::new(Source::File(path.clone()));
    let mut snapshot = match compile(
        &file.gateway,
        &file.resources,
        &mut Names::default(),
        1,
        &mut health,
    ) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            crate::error!("{e}");
            return 1;
        }
    };
    store.replace(file.resources);
    // Read once: a reload that changes one of these is reported and waits for a restart.
    let process = snapshot.process.clone();
    let targets = health.commit();

    // The prober: active checks, passive outcomes, the control API.
    let control = match process.control_listen {
        Some(addr) => match prober::bind_control(addr) {
            Ok(l) => Some(l),
            Err(e) => {
                crate::error!("cannot listen on {addr} (gateway.control_listen): {e}");
                return 1;
            }
        },
        None => None,
    };
    let prober = match prober::spawn(control, targets, snapshot.clone()) {
        Ok(p) => p,
        Err(e) => {
            crate::error!("cannot start the health prober: {e}");
            return 1;
        }
    };
    if let Some(demo) = &file.demo {
        if let Err(e) = crate::demo::start(&demo.backends) {
            crate::error!("cannot start demo backends: {e}");
            return 1;
        }
        crate::info!("started {} demo backend(s)", demo.backends.len());
    }

    // Must run before any thread is pinned: it reads this thread's affinity mask.
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = if process.workers == 0 {
        cores.len().min(parallelism).max(1)
    } else {
        process.workers
    };
    let core_for = |i: usize| -> Option<core_affinity::CoreId> {
        if !process.pin_cores {
            return None;
        }
        if !process.cpus.is_empty() {
            return Some(core_affinity::CoreId {
                id: process.cpus[i % process.cpus.len()],
            });
        }
        (!cores.is_empty()).then(|| cores[i % cores.len()])
    };

    let access_log = AccessLogConfig {
        target: process.access_log.clone(),
        json: process.access_log_format == "json",
    };
    let runtime = RuntimeOptions {
        driver: process.driver.clone(),
        uring_flags: process.io_uring_flags,
        defer_taskrun: process.io_uring_defer_taskrun,
        entries: process.io_uring_entries,
    };

    let listeners = match Listeners::bind(workers, &process.listen) {
        Ok(l) => Arc::new(l),
        Err((addr, e)) => {
            crate::error!("cannot listen on {addr} (gateway.listen): {e}");
            return 1;
        }
    };
    let mut handles: Vec<WorkerHandle> = Vec::with_capacity(workers);
    for i in 0..workers {
        let spec = WorkerSpec {
            index: i,
            core: core_for(i),
            runtime: runtime.clone(),
            snapshot: snapshot.clone(),
            listeners: listeners.clone(),
            access_log: access_log.clone(),
            passive: prober.passive.clone(),
        };
        match worker::spawn(spec) {
            Ok(h) => handles.push(h),
            Err(e) => {
                crate::error!("cannot start worker {i}: {e}");
                return 1;
            }
        }
    }
    crate::info!(
        "shardgate {} listening on {} with {} worker(s){}; config {} ({} routes)",
        env!("CARGO_PKG_VERSION"),
        process
            .listen
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        workers,
        if process.pin_cores { ", pinned" } else { "" },
        path.display(),
        snapshot.router.len()
    );

    let mut reload = |snapshot: &mut Arc<Snapshot>| {
        let plane = Plane {
            running: &process,
            store: &mut store,
            workers: &handles,
            health: &mut health,
            prober: &prober,
        };
        plane.reload(&path, snapshot);
    };
    let mut digest = file_digest(&path);
    let grace = snapshot.settings.graceful_shutdown_timeout;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Event::Signal(SIGHUP)) => {
                digest = file_digest(&path);
                reload(&mut snapshot);
            }
            Ok(Event::Signal(sig)) => {
                crate::info!(
                    "{} received: stopping; in-flight requests get {:?}",
                    if sig == SIGINT { "SIGINT" } else { "SIGTERM" },
                    grace
                );
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if process.watch_config {
                    let now = file_digest(&path);
                    if now.is_some() && now != digest {
                        digest = now;
                        crate::info!("config file changed");
                        reload(&mut snapshot);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }

    prober.mailbox.push(ProberMsg::Shutdown);
    for h in &handles {
        h.mailbox.send(ControlMsg::Shutdown { grace });
    }
    for h in handles {
        let _ = h.thread.join();
    }
    crate::info!("stopped");
    0
}

/// What a reload touches.
struct Plane<'a> {
    /// The process settings the gateway started with.
    running: &'a ProcessSettings,
    store: &'a mut Store,
    workers: &'a [WorkerHandle],
    health: &'a mut HealthRegistry,
    prober: &'a ProberHandle,
}

impl Plane<'_> {
    /// Loads, validates and publishes the config file; keeps the old one on any error.
    fn reload(self, path: &Path, current: &mut Arc<Snapshot>) {
        let next_version = current.version + 1;
        // A file reload looks every node host name up again.
        let mut names = Names::default();
        let compiled = load_file(path).and_then(|f| {
            let s = compile(
                &f.gateway,
                &f.resources,
                &mut names,
                next_version,
                self.health,
            )?;
            Ok((s, f.resources))
        });
        let (s, resources) = match compiled {
            Ok(done) => done,
            Err(e) => {
                self.health.abort();
                crate::error!(
                    "config reload refused, version {} keeps serving: {e}",
                    current.version
                );
                return;
            }
        };
        for field in self.running.changed_in(&s.process) {
            crate::warn!(
                "{field} changed: it takes effect at the next restart (the running value is kept)"
            );
        }
        let targets = self.health.commit();
        let s = Arc::new(s);
        self.prober
            .mailbox
            .push(ProberMsg::Update(targets, s.clone()));
        for w in self.workers {
            w.mailbox.send(ControlMsg::Snapshot(s.clone()));
        }
        let revision = self.store.replace(resources);
        // Report once every worker serves new requests with it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.workers.iter().any(|w| w.mailbox.applied() < s.version)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        crate::info!(
            "config reloaded: version {} ({} routes, resources revision {revision}), live on all workers",
            s.version,
            s.router.len()
        );
        *current = s;
    }
}
