//! The configuration file as the user writes it: APISIX's object model (routes, services,
//! upstreams) in TOML, with APISIX's field names and defaults.
//!
//! These types are plain data. They are checked and turned into the runtime form by
//! `Snapshot::compile` (snapshot.rs), which is where every semantic rule lives; serde only
//! catches unknown fields and wrong types, and its messages already name the field and line.

mod checks;
mod deployment;
mod duration;
mod error;
mod model;
mod plugin_attr;
pub mod proxy_cache;

pub use checks::*;
pub use deployment::*;
pub use duration::{seconds, MAX_SECONDS};
pub use error::{ConfigError, ObjectName, Unresolved};
pub use model::*;
pub use plugin_attr::*;

use std::path::Path;

/// APISIX's id rule: 1 to 64 characters of `[a-zA-Z0-9-_.]` (for the config file, the
/// Admin API and the store alike).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Config {
    /// Reads and parses a TOML config file. Semantic validation happens in
    /// `Snapshot::compile` (snapshot.rs).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        Config::parse(&text)
    }

    /// Parses TOML text into a config.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))
    }
}
