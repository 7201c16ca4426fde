//! The response cache behind the `proxy-cache` plugin: zones (`[gateway.proxy_cache]`),
//! each an index of entries in memory (`zone.rs`), with bodies in memory or in files
//! (`disk.rs`).
//!
//! Zones are process-wide and shared by every worker by default: a response fetched by one
//! core is a hit on all of them, and a zone's size is the whole cache's size. The index is a
//! lock-free map, so sharing costs a hit no lock. `per_worker = true` gives each worker its
//! own memory zone instead (the README compares the two).

pub mod control;
pub mod disk;
pub mod entry;
pub mod zone;

use crate::config::proxy_cache::{self, ProxyCacheConfig};
use crate::config::ConfigError;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use zone::Zone;

/// How a zone was configured.
struct Declared {
    name: String,
    disk: bool,
    /// Disk zones: the zone, started. Memory zones shared by all workers: the zone.
    shared: Option<&'static Zone>,
    /// `per_worker` memory zones: each worker's size.
    per_worker: Option<u64>,
}

struct Registry {
    zones: Vec<Declared>,
    /// Seconds a disk-zone response is fresh when the upstream does not say.
    default_ttl: u64,
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// Every zone made (per-worker zones included), for the metrics.
static ALL: std::sync::Mutex<Vec<&'static Zone>> = std::sync::Mutex::new(Vec::new());

fn made(zone: &'static Zone) -> &'static Zone {
    ALL.lock().unwrap_or_else(|e| e.into_inner()).push(zone);
    zone
}

/// Every zone made so far (a per-worker zone once per worker that used it).
pub fn all() -> Vec<&'static Zone> {
    ALL.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

thread_local! {
    static WORKER_ZONES: RefCell<HashMap<String, &'static Zone>> = RefCell::new(HashMap::new());
}

/// Checks the zones; errors name the field.
fn declare(cfg: &ProxyCacheConfig, workers: usize, start: bool) -> Result<Registry, ConfigError> {
    let default_ttl = proxy_cache::ttl("gateway.proxy_cache.cache_ttl", &cfg.cache_ttl)?;
    let mut zones: Vec<Declared> = Vec::new();
    for (i, z) in cfg.zones.iter().enumerate() {
        let field = |f: &str| format!("gateway.proxy_cache.zones[{i}].{f}");
        if z.name.is_empty() || zones.iter().any(|d| d.name == z.name) {
            return Err(ConfigError::invalid(
                field("name"),
                format!("expected a unique non-empty name, got {:?}", z.name),
            ));
        }
        let memory = proxy_cache::size(&field("memory_size"), &z.memory_size)?;
        let declared = match &z.disk_path {
            Some(path) => {
                if z.per_worker {
                    return Err(ConfigError::invalid(
                        field("per_worker"),
                        "applies to memory zones only (a disk zone is one directory)",
                    ));
                }
                let disk_size =
                    proxy_cache::size(&field("disk_size"), z.disk_size.as_deref().unwrap_or("1G"))?;
                let levels = proxy_cache::levels(
                    &field("cache_levels"),
                    z.cache_levels.as_deref().unwrap_or("1:2"),
                )?;
                let shared = if start {
                    let (disk, jobs) = disk::Disk::new(PathBuf::from(path), levels);
                    // About 128 bytes of index per key (nginx: 8,000 keys per MiB).
                    let max_entries = (memory / 128).max(16) as usize;
                    let zone: &'static Zone = Box::leak(Box::new(Zone::new(
                        z.name.clone(),
                        disk_size,
                        max_entries,
                        Some(disk),
                        // What the index (128 bytes a key) leaves of memory_size: small
                        // bodies kept in memory too.
                        memory.saturating_sub(max_entries as u64 / 2 * 128),
                    )));
                    made(zone);
                    std::thread::Builder::new()
                        .name(format!("sg-cache-{}", z.name))
                        .spawn(move || disk::run(zone, jobs))
                        .map_err(|e| ConfigError::invalid(field("disk_path"), e.to_string()))?;
                    Some(zone)
                } else {
                    None
                };
                Declared {
                    name: z.name.clone(),
                    disk: true,
                    shared,
                    per_worker: None,
                }
            }
            None if z.per_worker => Declared {
                name: z.name.clone(),
                disk: false,
                shared: None,
                per_worker: Some((memory / workers.max(1) as u64).max(1)),
            },
            None => Declared {
                name: z.name.clone(),
                disk: false,
                shared: start.then(|| memory_zone(&z.name, memory)),
                per_worker: None,
            },
        };
        zones.push(declared);
    }
    Ok(Registry { zones, default_ttl })
}

fn memory_zone(name: &str, size: u64) -> &'static Zone {
    // An entry takes a few hundred bytes besides its body: bound the count as well.
    let max_entries = (size / 256).max(16) as usize;
    made(Box::leak(Box::new(Zone::new(
        name.to_string(),
        size,
        max_entries,
        None,
        0,
    ))))
}

/// Sets up the zones (at start, before any plugin is built): disk zones get their thread,
/// which indexes what is already on disk.
pub fn configure(cfg: &ProxyCacheConfig, workers: usize) -> Result<(), ConfigError> {
    if REGISTRY.get().is_some() {
        return Ok(());
    }
    let registry = declare(cfg, workers, true)?;
    let _ = REGISTRY.set(registry);
    Ok(())
}

/// Checks the zones without starting them (`shardgate check`).
pub fn check(cfg: &ProxyCacheConfig) -> Result<(), ConfigError> {
    let registry = declare(cfg, 1, false)?;
    let _ = REGISTRY.set(registry);
    Ok(())
}

fn registry() -> &'static Registry {
    REGISTRY.get_or_init(|| {
        declare(&ProxyCacheConfig::default(), 1, false).unwrap_or(Registry {
            zones: Vec::new(),
            default_ttl: 10,
        })
    })
}

/// Whether zone `name` exists, and whether it is a disk zone (`None`: no such zone).
pub fn kind(name: &str) -> Option<bool> {
    registry()
        .zones
        .iter()
        .find(|z| z.name == name)
        .map(|z| z.disk)
}

/// The zone this worker uses under `name`.
pub fn zone(name: &str) -> Option<&'static Zone> {
    let d = registry().zones.iter().find(|z| z.name == name)?;
    if let Some(z) = d.shared {
        return Some(z);
    }
    let size = d.per_worker?;
    Some(WORKER_ZONES.with(|w| {
        *w.borrow_mut()
            .entry(name.to_string())
            .or_insert_with(|| memory_zone(name, size))
    }))
}

/// Seconds a disk-zone response is fresh when the upstream does not say.
pub fn default_ttl() -> u64 {
    registry().default_ttl
}
