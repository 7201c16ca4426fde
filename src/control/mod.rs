//! The control plane: one thread (the main thread) owns the configuration. It loads and
//! compiles it, opens the resources' provider (the file, or the store), binds the listeners,
//! starts the workers and the Admin API, and then waits for events: SIGHUP or a changed config
//! file reloads, an Admin API request is answered (`plane.rs`), SIGTERM/SIGINT shuts down
//! gracefully.
//!
//! A change compiles a new snapshot completely before any worker sees it; if anything is
//! wrong it is refused (logged, or answered with the reason) and every worker keeps the old
//! one. A good snapshot is posted to each worker's lock-free mailbox and the worker's
//! doorbell rung; workers switch between requests and report the version they switched to.

use crate::admin::{AdminRequest, AdminResponse};
use crate::config::{ConfigError, GatewayConfig};
use crate::dns::Names;
use crate::health::prober::{self};
use crate::health::Registry as HealthRegistry;
use crate::log::access::AccessLogConfig;
use crate::net::inherit;
use crate::resources::{load_file, Resources};
use crate::snapshot::{CompileCache, Snapshot};
use crate::store::{Objects, StoreFile};
use crate::worker::{self, Listeners, RuntimeOptions, WorkerHandle, WorkerSpec};
use plane::{Plane, Provider};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Loads and validates a config file the way `run` would (for `shardgate check`).
pub fn check(path: &Path) -> Result<Snapshot, ConfigError> {
    check_file(&load_file(path)?)
}

/// Compiles a file's settings and resources, then checks its resources against the schemas
/// the Admin API uses (after the compiler, whose messages speak the file's terms).
fn check_file(file: &crate::resources::FileContents) -> Result<Snapshot, ConfigError> {
    crate::cache::check(&file.gateway.proxy_cache)?;
    let snapshot = compile(
        &file.gateway,
        &file.resources,
        &mut Names::default(),
        1,
        &mut HealthRegistry::default(),
        &mut CompileCache::default(),
    )?;
    file.check_schemas()?;
    file.plugin_attr.prometheus.settings()?;
    file.plugin_attr.opentelemetry.check()?;
    Ok(snapshot)
}

/// Compiles settings and resources into a snapshot, resolving the node host names the
/// compilation asks for (blocking DNS, here on the control thread; see `dns.rs`).
pub fn compile(
    gateway: &GatewayConfig,
    resources: &Resources,
    names: &mut Names,
    version: u64,
    health: &mut HealthRegistry,
    cache: &mut CompileCache,
) -> Result<Snapshot, ConfigError> {
    match Snapshot::compile(gateway, resources, names, version, health, cache) {
        Err(ConfigError::Unresolved(missing)) => {
            names.resolve(&missing)?;
            Snapshot::compile(gateway, resources, names, version, health, cache)
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

mod etcd;
mod plane;
pub mod status;
pub mod transfer;
pub mod upgrade;

enum Event {
    Signal(i32),
    /// An Admin API request, and where its answer goes.
    Admin(AdminRequest, mpsc::Sender<AdminResponse>),
    /// What the etcd watcher saw.
    Etcd(crate::etcd::Update),
}

/// Runs the gateway until it is told to stop (or has handed over to its successor, see
/// `upgrade.rs`); `pid_file`: where it writes its pid once it serves. Returns the process
/// exit code.
pub fn run(path: PathBuf, pid_file: Option<PathBuf>) -> i32 {
    // Before any thread starts: it reads (and clears) the inherited listeners' variable.
    let upgraded = crate::net::inherit::inherited();
    // The file provider: process settings and resources from config.toml.
    let file = match load_file(&path) {
        Ok(f) => f,
        Err(e) => {
            crate::error!("{e}");
            return 1;
        }
    };
    // Tracing's settings, before any plugin is built (they are read at start only).
    if let Err(e) = file.plugin_attr.opentelemetry.check() {
        crate::error!("{e}");
        return 1;
    }
    crate::tracing::configure(file.plugin_attr.opentelemetry.clone());
    // Cache zones, before any plugin is built (proxy-cache checks its zone exists).
    let cache_workers = match file.gateway.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    if let Err(e) = crate::cache::configure(&file.gateway.proxy_cache, cache_workers) {
        crate::error!("{e}");
        return 1;
    }
    // Signal handlers first: a SIGHUP or SIGTERM that arrives while the gateway starts must be
    // queued, not take the default action (terminate).
    let (tx, rx) = mpsc::channel::<Event>();
    let admin_tx = tx.clone();
    let etcd_tx = tx.clone();
    let mut signals = match signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT, SIGUSR2])
    {
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

    // The provider: the file's resources, or the store's (imported from the file once).
    let (provider, objects) = match open_provider(&path, &file) {
        Ok(p) => p,
        Err(e) => {
            crate::error!("{e}");
            return 1;
        }
    };
    let resources = match &provider {
        Provider::File => Ok(file.resources.clone()),
        Provider::Store(_) | Provider::Etcd(_) => objects.resources().map(Arc::new),
    };
    let mut health = HealthRegistry::default();
    let mut cache = CompileCache::default();
    let compiled = resources.and_then(|r| {
        compile(
            &file.gateway,
            &r,
            &mut Names::default(),
            1,
            &mut health,
            &mut cache,
        )
    });
    let snapshot = match compiled {
        Ok(s) => Arc::new(s),
        Err(e) => {
            crate::error!("{e}");
            return 1;
        }
    };
    // Read once: a reload that changes one of these is reported and waits for a restart.
    let process = snapshot.process.clone();
    let targets = health.commit();

    // The prober: active checks, passive outcomes, the control API.
    let control = match process.control_listen {
        Some(addr) => match inherit::listener(&format!("control {addr}"), addr, || {
            prober::bind_control(addr)
        }) {
            Ok(l) => Some(l),
            Err(e) => {
                crate::error!("cannot listen on {addr} (gateway.control_listen): {e}");
                return 1;
            }
        },
        None => None,
    };
    let status = status::ConfigStatus::new(status::Status {
        provider: provider.name(),
        config_version: snapshot.version,
        revision: objects.revision,
        ..Default::default()
    });
    if let Provider::Etcd(etcd) = &provider {
        etcd::set_reachable(&status, true, Some(etcd.endpoint().to_string()), None);
    }
    // Must run before any thread is pinned: it reads this thread's affinity mask.
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = if process.workers == 0 {
        cores.len().min(parallelism).max(1)
    } else {
        process.workers
    };
    // The metrics: every worker's shard, and the exporter's listener.
    let settings = match file.plugin_attr.prometheus.settings() {
        Ok(s) => s,
        Err(e) => {
            crate::error!("{e}");
            return 1;
        }
    };
    let exporter = match settings.export_addr {
        Some(addr) => match inherit::listener(&format!("exporter {addr}"), addr, || {
            prober::bind_control(addr)
        }) {
            Ok(l) => Some(l),
            Err(e) => {
                crate::error!(
                    "cannot listen on {addr} (plugin_attr.prometheus.export_addr; enable_export_server = false turns the exporter off): {e}"
                );
                return 1;
            }
        },
        None => None,
    };
    let metrics = crate::metrics::Metrics::new(settings, workers);
    let listeners = prober::ControlListeners { control, exporter };
    let prober = match prober::spawn(
        listeners,
        targets,
        snapshot.clone(),
        status.clone(),
        metrics.clone(),
    ) {
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

    if !process.listen_tls.is_empty() && snapshot.tls.is_none() {
        crate::info!(
            "gateway.listen_tls: no ssls object serves a certificate yet; TLS handshakes fail until one is added"
        );
    }
    let listeners = match Listeners::bind(workers, &process.listen, &process.listen_tls) {
        Ok(l) => Arc::new(l),
        Err((addr, e)) => {
            crate::error!("cannot listen on {addr} (gateway.listen / gateway.listen_tls): {e}");
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
            metrics: metrics.clone(),
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
            .chain(process.listen_tls.iter().map(|a| format!("{a} (TLS)")))
            .collect::<Vec<_>>()
            .join(", "),
        workers,
        if process.pin_cores { ", pinned" } else { "" },
        path.display(),
        snapshot.router.len()
    );

    let grace = snapshot.settings.graceful_shutdown_timeout;
    let mut plane = Plane {
        path: path.clone(),
        running: process.clone(),
        provider,
        objects,
        gateway: file.gateway.clone(),
        snapshot,
        workers: handles,
        health,
        prober,
        status,
        cache,
        metrics,
        compile_started: None,
    };
    let admin_gate = Arc::new(crate::admin::server::Gate::default());
    let data_dir = Path::new(&file.deployment.data_dir);
    if let Err(e) = start_admin(&file.admin, data_dir, admin_tx, admin_gate.clone()) {
        crate::error!("{e}");
        // Started for an upgrade, the listeners are the old process's too: left listening.
        plane.stop(grace, upgraded);
        return 1;
    }
    if let Provider::Etcd(etcd) = &plane.provider {
        let send = move |u: crate::etcd::Update| etcd_tx.send(Event::Etcd(u)).is_ok();
        let delay = Duration::from_secs(etcd.config.resync_delay);
        let start = plane.objects.revision as i64 + 1;
        if let Err(e) = crate::etcd::watch::spawn(etcd.watcher_client(), start, delay, send) {
            crate::error!("cannot start the etcd watcher: {e}");
            plane.stop(grace, upgraded);
            return 1;
        }
    }
    upgrade::announce_ready(pid_file.as_deref());
    let mut successor = None;
    let mut digest = file_digest(&path);
    let mut backlog: std::collections::VecDeque<Event> = Default::default();
    loop {
        let wait = if plane.waiting() {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        let next = match backlog.pop_front() {
            Some(ev) => Ok(ev),
            None => rx.recv_timeout(wait),
        };
        match next {
            Ok(Event::Signal(SIGHUP)) => {
                digest = file_digest(&path);
                plane.reload();
            }
            Ok(Event::Signal(SIGUSR2)) => {
                successor = upgrade::perform(&admin_gate, pid_file.as_deref());
                if successor.is_some() {
                    break;
                }
            }
            Ok(Event::Signal(sig)) => {
                crate::info!(
                    "{} received: stopping; in-flight requests get {:?}",
                    if sig == SIGINT { "SIGINT" } else { "SIGTERM" },
                    grace
                );
                break;
            }
            Ok(Event::Admin(req, reply)) => plane.admin(&req, reply),
            Ok(Event::Etcd(update)) => backlog.extend(plane.etcd(update, &rx)),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                plane.answer_pending();
                if process.watch_config {
                    let now = file_digest(&path);
                    if now.is_some() && now != digest {
                        digest = now;
                        crate::info!("config file changed");
                        plane.reload();
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if successor.is_some() {
        // Admin requests that waited for the upgrade were not applied here: their clients
        // get a 503 at once and retry against the new process.
        while let Ok(ev) = rx.try_recv() {
            drop(ev);
        }
        plane.stop(grace, true);
        crate::info!("stopped after the upgrade");
        return 0;
    }
    plane.stop(grace, false);
    if let Some(p) = &pid_file {
        upgrade::remove_pid_file(p);
    }
    crate::info!("stopped");
    0
}

/// Opens the resources' provider: for `store`, the store file (imported from `config.toml`
/// on first start).
fn open_provider(
    path: &Path,
    file: &crate::resources::FileContents,
) -> Result<(Provider, Objects), ConfigError> {
    let now = crate::log::now_secs();
    let from_file = Objects::from_values(&file.values, now)?;
    match file.deployment.config_provider.as_str() {
        "file" => {
            check_file(file)?;
            Ok((Provider::File, from_file))
        }
        "store" => {
            let store = StoreFile::new(Path::new(&file.deployment.data_dir));
            let invalid = |e: String| ConfigError::invalid("deployment.data_dir", e);
            let objects = match store.load().map_err(invalid)? {
                Some(objects) => objects,
                None => {
                    // Only a file that would serve is imported: a bad one is refused before
                    // it reaches the store, and a fixed file imports at the next start.
                    check_file(file)?;
                    store.save(&from_file).map_err(invalid)?;
                    crate::info!(
                        "store {} created: imported the resources of {} once",
                        store.path().display(),
                        path.display()
                    );
                    from_file
                }
            };
            Ok((Provider::Store(store), objects))
        }
        "etcd" => {
            let (side, objects) = etcd::EtcdSide::open(&file.deployment.etcd)
                .map_err(|e| ConfigError::invalid("deployment.etcd", e))?;
            Ok((Provider::Etcd(Box::new(side)), objects))
        }
        other => Err(ConfigError::invalid(
            "deployment.config_provider",
            format!("\"{other}\" is not a provider (\"file\", \"store\" or \"etcd\")"),
        )),
    }
}

/// Starts the Admin API listener (unless `listen = "off"`), handing requests to the control
/// loop through `tx`.
fn start_admin(
    admin: &crate::config::AdminConfig,
    data_dir: &Path,
    tx: mpsc::Sender<Event>,
    gate: Arc<crate::admin::server::Gate>,
) -> Result<(), String> {
    if admin.listen == "off" {
        return Ok(());
    }
    let addr: std::net::SocketAddr = admin.listen.parse().map_err(|_| {
        format!(
            "invalid config: admin.listen: '{}' is not an ip:port address (or \"off\")",
            admin.listen
        )
    })?;
    let admin_key = match admin.admin_key.clone().filter(|k| !k.is_empty()) {
        Some(k) => k,
        None if addr.ip().is_loopback() => generated_key(data_dir)?,
        None => {
            return Err(format!(
                "invalid config: admin.admin_key: required when the Admin API listens on {addr}, beyond loopback (there is no default key)"
            ))
        }
    };
    let mut allow = Vec::new();
    for (i, a) in admin.allow_admin.iter().enumerate() {
        allow.push(
            crate::route::IpNet::parse(a)
                .map_err(|e| format!("invalid config: admin.allow_admin[{i}]: {e}"))?,
        );
    }
    let listener = inherit::listener(&format!("admin {addr}"), addr, || {
        std::net::TcpListener::bind(addr)
    })
    .map_err(|e| format!("cannot listen on {addr} (admin.listen): {e}"))?;
    let access = crate::admin::server::Access {
        admin_key,
        viewer_key: admin.viewer_key.clone().filter(|k| !k.is_empty()),
        allow,
    };
    let dispatch = move |req: AdminRequest| -> Option<AdminResponse> {
        let (reply_tx, reply_rx) = mpsc::channel();
        tx.send(Event::Admin(req, reply_tx)).ok()?;
        reply_rx.recv().ok()
    };
    crate::admin::server::spawn(listener, access, Arc::new(dispatch), gate)
        .map_err(|e| format!("cannot start the Admin API: {e}"))?;
    crate::info!("Admin API listening on {addr}");
    Ok(())
}

/// The Admin API key of a loopback listener configured without one: made up on first start
/// (128 random bits) into `data_dir/admin_key`, mode 0600, and read from there afterwards.
fn generated_key(data_dir: &Path) -> Result<String, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("admin_key");
    if let Ok(key) = std::fs::read_to_string(&path) {
        let key = key.trim().to_string();
        if !key.is_empty() {
            return Ok(key);
        }
    }
    let fail =
        |e: std::io::Error| format!("cannot write the Admin API key to {}: {e}", path.display());
    std::fs::create_dir_all(data_dir).map_err(fail)?;
    let key = uuid::Uuid::new_v4().simple().to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(fail)?;
    std::io::Write::write_all(&mut f, format!("{key}\n").as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    crate::info!(
        "admin.admin_key is not set: generated one into {} (mode 0600); send it as X-API-KEY",
        path.display()
    );
    Ok(key)
}
