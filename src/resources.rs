//! Resources: the objects requests are served with (upstreams, services, routes, global
//! rules, plugin configs), kept apart from the process settings of `[gateway]`. Resources are
//! reloadable: a change is compiled into a new snapshot and swapped in without a restart.
//! Process settings (listeners, workers, io_uring, the control listener, the access log
//! target) are read once at start; a changed one is reported and waits for a restart.
//!
//! A [`Store`] holds the resources being served and a revision that grows with each change.
//! Providers feed it: today the file provider (`config.toml`, at start, on SIGHUP or when the
//! file changes) replaces them all at once; the Admin API and etcd will change them one object
//! at a time. A change reaches the store only after it compiled: the store always holds what
//! the workers serve.

use crate::config::{
    Config, ConfigError, DemoConfig, GatewayConfig, GlobalRuleConfig, PluginConfigConfig,
    RouteConfig, ServiceConfig, UpstreamConfig,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Every reloadable object.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub upstreams: Vec<UpstreamConfig>,
    pub services: Vec<ServiceConfig>,
    pub routes: Vec<RouteConfig>,
    pub global_rules: Vec<GlobalRuleConfig>,
    pub plugin_configs: Vec<PluginConfigConfig>,
}

/// Where the resources come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The `config.toml` the gateway was started with.
    File(PathBuf),
}

/// The resources being served.
#[derive(Debug)]
pub struct Store {
    source: Source,
    current: Arc<Resources>,
    revision: u64,
}

impl Store {
    pub fn new(source: Source) -> Store {
        Store {
            source,
            current: Arc::default(),
            revision: 0,
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The resources as served now.
    pub fn current(&self) -> Arc<Resources> {
        self.current.clone()
    }

    /// Grows with every change (0: nothing loaded yet).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Replaces every resource (a file load that compiled). Returns the new revision.
    pub fn replace(&mut self, resources: Arc<Resources>) -> u64 {
        self.current = resources;
        self.revision += 1;
        self.revision
    }
}

/// What the file provider reads from `config.toml`.
pub struct FileContents {
    pub gateway: GatewayConfig,
    pub resources: Arc<Resources>,
    pub demo: Option<DemoConfig>,
}

/// Reads and parses `path` (semantic checks are the compiler's).
pub fn load_file(path: &Path) -> Result<FileContents, ConfigError> {
    Ok(Config::load(path)?.split())
}

impl Config {
    /// The file's process settings, its resources, and its demo backends.
    pub fn split(self) -> FileContents {
        FileContents {
            gateway: self.gateway,
            resources: Arc::new(Resources {
                upstreams: self.upstreams,
                services: self.services,
                routes: self.routes,
                global_rules: self.global_rules,
                plugin_configs: self.plugin_configs,
            }),
            demo: self.demo,
        }
    }
}
