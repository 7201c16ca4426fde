//! `[gateway.proxy_cache]`: the cache zones the `proxy-cache` plugin stores into (APISIX's
//! `apisix.proxy_cache`), read at start: a zone is a process-wide resource, so changing the
//! zones takes a restart, as in APISIX (whose zones are nginx `proxy_cache_path`s).

use super::ConfigError;
use serde::Deserialize;

/// `[gateway.proxy_cache]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyCacheConfig {
    /// How long a disk-zone response is fresh when the upstream says nothing (no
    /// `Cache-Control: max-age`, no `Expires`): APISIX's `proxy_cache.cache_ttl`, `"10s"`.
    pub cache_ttl: String,
    pub zones: Vec<ZoneConfig>,
}

/// One `[[gateway.proxy_cache.zones]]`: a memory zone (no `disk_path`) or a disk zone.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub name: String,
    /// Memory zone: bytes of entries kept (bodies included). Disk zone: memory for the
    /// index, as nginx's `keys_zone` size (about 8,000 keys per MiB).
    pub memory_size: String,
    /// Disk zone: bytes of cached files at most.
    pub disk_size: Option<String>,
    pub disk_path: Option<String>,
    /// Directory levels under `disk_path`, nginx's `levels` (`"1:2"`).
    pub cache_levels: Option<String>,
    /// Shardgate's: each worker keeps its own copy of a memory zone (a quarter of
    /// `memory_size` each with 4 workers) instead of one zone all workers share. See the
    /// README for why sharing is the default.
    #[serde(default)]
    pub per_worker: bool,
}

impl Default for ProxyCacheConfig {
    /// APISIX's default zones (its `config-default.yaml`).
    fn default() -> ProxyCacheConfig {
        ProxyCacheConfig {
            cache_ttl: "10s".into(),
            zones: vec![
                ZoneConfig {
                    name: "disk_cache_one".into(),
                    memory_size: "50m".into(),
                    disk_size: Some("1G".into()),
                    disk_path: Some("/tmp/disk_cache_one".into()),
                    cache_levels: Some("1:2".into()),
                    per_worker: false,
                },
                ZoneConfig {
                    name: "memory_cache".into(),
                    memory_size: "50m".into(),
                    disk_size: None,
                    disk_path: None,
                    cache_levels: None,
                    per_worker: false,
                },
            ],
        }
    }
}

/// A size as nginx writes them: bytes, or with `k`, `m` or `g` (either case).
pub fn size(field: &str, text: &str) -> Result<u64, ConfigError> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_lowercase()),
        _ => (t, 'b'),
    };
    let mult: u64 = match unit {
        'b' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => 0,
    };
    match digits.parse::<u64>() {
        Ok(n) if mult > 0 && n > 0 => n.checked_mul(mult).ok_or(()),
        _ => Err(()),
    }
    .map_err(|()| {
        ConfigError::invalid(
            field,
            format!("expected a size such as \"50m\" or \"1G\", got {text:?}"),
        )
    })
}

/// Seconds as APISIX writes `cache_ttl`: `"10s"`, `"5m"`, `"1h"`, `"1d"` or a bare number.
pub fn ttl(field: &str, text: &str) -> Result<u64, ConfigError> {
    let t = text.trim();
    let (digits, mult) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1),
        Some('m') => (&t[..t.len() - 1], 60),
        Some('h') => (&t[..t.len() - 1], 3600),
        Some('d') => (&t[..t.len() - 1], 86400),
        _ => (t, 1),
    };
    match digits.parse::<u64>() {
        Ok(n) if n > 0 && n <= 365 * 86400 / mult => Ok(n * mult),
        _ => Err(ConfigError::invalid(
            field,
            format!("expected a duration such as \"10s\" or \"5m\", got {text:?}"),
        )),
    }
}

/// Directory levels (`"1:2"`): one to three levels of 1 or 2 hex digits, as nginx.
pub fn levels(field: &str, text: &str) -> Result<Vec<usize>, ConfigError> {
    let levels: Vec<usize> = text
        .split(':')
        .map(|l| l.trim().parse::<usize>().unwrap_or(0))
        .collect();
    if levels.is_empty() || levels.len() > 3 || levels.iter().any(|&l| !(1..=2).contains(&l)) {
        return Err(ConfigError::invalid(
            field,
            format!("expected one to three levels of 1 or 2 (\"1:2\"), got {text:?}"),
        ));
    }
    Ok(levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(size("f", "50m").unwrap(), 50 << 20);
        assert_eq!(size("f", "1G").unwrap(), 1 << 30);
        assert_eq!(size("f", "4096").unwrap(), 4096);
        assert!(size("f", "0").is_err());
        assert!(size("f", "12x").is_err());
        assert_eq!(ttl("f", "10s").unwrap(), 10);
        assert_eq!(ttl("f", "2m").unwrap(), 120);
        assert!(ttl("f", "-1s").is_err());
        assert_eq!(levels("f", "1:2").unwrap(), vec![1, 2]);
        assert!(levels("f", "3").is_err());
    }
}
