//! `[deployment]` and `[admin]`: where resources come from (the file, the embedded store,
//! an etcd cluster), how secret fields are kept, and the Admin API. Process settings: read
//! at start.

use serde::Deserialize;

/// `[deployment]`: where resources come from (process settings: read at start).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeploymentConfig {
    /// `"file"`: resources from this file (SIGHUP / file watch; the Admin API reads only).
    /// `"store"` (the default, as APISIX's default is its config centre): resources in the
    /// embedded store under `data_dir`, changed through the Admin API; on first start, this
    /// file's resources are imported once.
    /// `"etcd"`: resources in an etcd v3 cluster under APISIX's key layout, shared by every
    /// gateway pointed at it; the Admin API writes there and every gateway applies its watch.
    pub config_provider: String,
    /// Where the store keeps its file.
    pub data_dir: String,
    /// `[deployment.etcd]`: the cluster, with `config_provider = "etcd"`.
    pub etcd: EtcdConfig,
    /// `[deployment.data_encryption]`: how secret fields (SSL keys) are stored.
    pub data_encryption: DataEncryptionConfig,
}

/// APISIX's `apisix.data_encryption`: its field names and default keyring, so what APISIX
/// stored is read as it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataEncryptionConfig {
    pub enable_encrypt_fields: bool,
    /// AES keys (16 or 32 bytes); the first encrypts, each is tried to decrypt.
    pub keyring: Vec<String>,
}

impl Default for DataEncryptionConfig {
    fn default() -> Self {
        DataEncryptionConfig {
            enable_encrypt_fields: true,
            keyring: crate::data_encryption::DEFAULT_KEYRING
                .iter()
                .map(|k| k.to_string())
                .collect(),
        }
    }
}

impl Default for DeploymentConfig {
    fn default() -> Self {
        DeploymentConfig {
            config_provider: "store".into(),
            data_dir: "data".into(),
            etcd: EtcdConfig::default(),
            data_encryption: DataEncryptionConfig::default(),
        }
    }
}

/// `[deployment.etcd]`: APISIX's `deployment.etcd` fields and defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Endpoints of one cluster (`http://` or `https://`), tried in turn.
    pub host: Vec<String>,
    /// The key prefix (`/apisix`): routes live at `/apisix/routes/{id}`.
    pub prefix: String,
    /// Seconds for a connect, a read or a write.
    pub timeout: u64,
    /// Seconds a watch may stay silent before it is re-opened from the last revision.
    pub watch_timeout: u64,
    /// Seconds before reconnecting after a failure (doubled up to 8×, plus jitter).
    pub resync_delay: u64,
    /// How many times start-up retries an unreachable cluster before giving up.
    pub startup_retry: u32,
    pub user: Option<String>,
    pub password: Option<String>,
    pub tls: EtcdTlsConfig,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            host: vec!["http://127.0.0.1:2379".into()],
            prefix: "/apisix".into(),
            timeout: 30,
            watch_timeout: 50,
            resync_delay: 5,
            startup_retry: 2,
            user: None,
            password: None,
            tls: EtcdTlsConfig::default(),
        }
    }
}

/// `[deployment.etcd.tls]`: for `https://` hosts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdTlsConfig {
    /// Check etcd's certificate (against `ca`, or the system's CAs).
    pub verify: bool,
    /// PEM file of the CAs that sign etcd's certificate (APISIX reads
    /// `apisix.ssl.ssl_trusted_certificate`); the system's bundle when unset.
    pub ca: Option<String>,
    /// PEM client certificate and key, for a cluster that asks for one.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// The server name sent and checked; the host of the URL when unset.
    pub sni: Option<String>,
}

impl Default for EtcdTlsConfig {
    fn default() -> Self {
        EtcdTlsConfig {
            verify: true,
            ca: None,
            cert: None,
            key: None,
            sni: None,
        }
    }
}

/// `[admin]`: the Admin API (APISIX v3 paths and JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `ip:port`, or `"off"`.
    pub listen: String,
    /// The key that may change things (`X-API-KEY`). Required: no well-known default.
    pub admin_key: Option<String>,
    /// A key that may only read.
    pub viewer_key: Option<String>,
    /// Client addresses and CIDRs allowed to use the API (APISIX `allow_admin`).
    pub allow_admin: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "off".into(),
            admin_key: None,
            viewer_key: None,
            allow_admin: vec!["127.0.0.0/24".into()],
        }
    }
}
