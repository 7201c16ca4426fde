//! The control plane: one thread (the main thread) owns the configuration. It loads and
//! compiles it, binds the listeners, starts the workers, and then waits for events: SIGHUP or
//! a changed config file reloads, SIGTERM/SIGINT shuts down gracefully.
//!
//! A reload compiles a new snapshot completely before any worker sees it; if anything is wrong
//! the new config is refused with the reason logged and every worker keeps the old one. A
//! good snapshot is posted to each worker's lock-free mailbox; workers switch between
//! requests and report the version they switched to.

use crate::config::Config;
use crate::health::prober::{self, ProberHandle, ProberMsg};
use crate::health::Registry as HealthRegistry;
use crate::log::access::AccessLogConfig;
use crate::snapshot::Snapshot;
use crate::worker::{self, ControlMsg, Listeners, RuntimeOptions, WorkerHandle, WorkerSpec};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Loads and validates a config file the way `run` would (for `shardgate check`).
pub fn check(path: &Path) -> Result<Snapshot, crate::config::ConfigError> {
    let config = Config::load(path)?;
    Snapshot::compile(&config, 1, &mut HealthRegistry::default())
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
    let config = match Config::load(&path) {
        Ok(c) => c,
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
    let mut snapshot = match Snapshot::compile(&config, 1, &mut health) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            crate::error!("{e}");
            return 1;
        }
    };
    let targets = health.commit();

    // The prober: active checks, passive outcomes, the control API.
    let control = match snapshot.control_listen {
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
    let gw = config.gateway.clone();

    if let Some(demo) = &config.demo {
        if let Err(e) = crate::demo::start(&demo.backends) {
            crate::error!("cannot start demo backends: {e}");
            return 1;
        }
        crate::info!("started {} demo backend(s)", demo.backends.len());
    }

    // Must run before any thread is pinned: it reads this thread's affinity mask.
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = if gw.workers == 0 {
        cores.len().min(parallelism).max(1)
    } else {
        gw.workers
    };
    let core_for = |i: usize| -> Option<core_affinity::CoreId> {
        if !gw.pin_cores {
            return None;
        }
        if !gw.cpus.is_empty() {
            return Some(core_affinity::CoreId {
                id: gw.cpus[i % gw.cpus.len()],
            });
        }
        (!cores.is_empty()).then(|| cores[i % cores.len()])
    };

    let access_log = AccessLogConfig {
        target: gw.access_log.clone(),
        json: gw.access_log_format == "json",
    };
    let runtime = RuntimeOptions {
        driver: gw.driver.clone(),
        uring_flags: gw.io_uring_flags,
        defer_taskrun: gw.io_uring_defer_taskrun,
        entries: gw.io_uring_entries,
    };

    let listeners = match Listeners::bind(workers, &snapshot.listen) {
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
        snapshot
            .listen
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        workers,
        if gw.pin_cores { ", pinned" } else { "" },
        path.display(),
        snapshot.router.len()
    );

    let mut digest = file_digest(&path);
    let grace = snapshot.settings.graceful_shutdown_timeout;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Event::Signal(SIGHUP)) => {
                digest = file_digest(&path);
                reload(&path, &mut snapshot, &handles, &mut health, &prober);
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
                if gw.watch_config {
                    let now = file_digest(&path);
                    if now.is_some() && now != digest {
                        digest = now;
                        crate::info!("config file changed");
                        reload(&path, &mut snapshot, &handles, &mut health, &prober);
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

/// Loads, validates and publishes a new config; keeps the old one on any error.
fn reload(
    path: &Path,
    current: &mut Arc<Snapshot>,
    workers: &[WorkerHandle],
    health: &mut HealthRegistry,
    prober: &ProberHandle,
) {
    let next_version = current.version + 1;
    let compiled = Config::load(path).and_then(|c| Snapshot::compile(&c, next_version, health));
    match compiled {
        Ok(s) => {
            if s.control_listen != current.control_listen {
                crate::warn!(
                    "gateway.control_listen changed; the control listener is kept until a restart"
                );
            }
            let targets = health.commit();
            if s.listen != current.listen {
                crate::warn!(
                    "gateway.listen changed; listeners are kept as they are until a restart"
                );
            }
            let s = Arc::new(s);
            prober.mailbox.push(ProberMsg::Update(targets, s.clone()));
            for w in workers {
                w.mailbox.send(ControlMsg::Snapshot(s.clone()));
            }
            // Report once every worker serves new requests with it.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while workers.iter().any(|w| w.mailbox.applied() < s.version)
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            crate::info!(
                "config reloaded: version {} ({} routes), live on all workers",
                s.version,
                s.router.len()
            );
            *current = s;
        }
        Err(e) => {
            health.abort();
            crate::error!(
                "config reload refused, version {} keeps serving: {e}",
                current.version
            );
        }
    }
}
