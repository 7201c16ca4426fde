use super::{AdminConfig, DeploymentConfig, PluginAttr};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Plugins that run for every request, before route and service plugins.
    #[serde(default)]
    pub global_rules: Vec<GlobalRuleConfig>,
    /// Reusable plugin sets, bound to routes by `plugin_config_id` (APISIX `plugin_configs`).
    #[serde(default)]
    pub plugin_configs: Vec<PluginConfigConfig>,
    /// API users (APISIX `consumers`), and their credentials.
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    /// Plugins shared by the consumers that name the group in `group_id` (APISIX
    /// `consumer_groups`).
    #[serde(default)]
    pub consumer_groups: Vec<ConsumerGroupConfig>,
    #[serde(default)]
    pub credentials: Vec<CredentialConfig>,
    /// Settings a plugin shares across all its instances (APISIX `plugin_metadata`), by the
    /// plugin's name in `id`.
    #[serde(default)]
    pub plugin_metadata: Vec<toml::Table>,
    /// Certificates and keys (APISIX `ssls`), chosen by SNI.
    #[serde(default)]
    pub ssls: Vec<SslConfig>,
    /// Built-in demo backends, so the shipped config answers without any other server.
    #[serde(default)]
    pub demo: Option<DemoConfig>,
    /// Where resources come from, and where the store keeps them.
    #[serde(default)]
    pub deployment: DeploymentConfig,
    /// The Admin API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Plugins' process-wide settings (APISIX `plugin_attr`), read at start.
    #[serde(default)]
    pub plugin_attr: PluginAttr,
}

/// Process-wide settings: listeners, workers, client-side limits and timeouts.
/// Defaults follow nginx as APISIX configures it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub listen: Vec<String>,
    /// Addresses that terminate TLS (APISIX `apisix.ssl.listen`), certificates from `ssls`.
    pub listen_tls: Vec<String>,
    /// The name whose certificate a client that sends no SNI gets (APISIX
    /// `apisix.ssl.fallback_sni`); unset: such handshakes fail.
    pub fallback_sni: Option<String>,
    /// Seconds a client gets to complete its TLS handshake (nginx `ssl_handshake_timeout`).
    pub ssl_handshake_timeout: f64,
    /// PEM bundle of CAs trusted for upstream certificates (APISIX
    /// `apisix.ssl.ssl_trusted_certificate`); unset: the system's roots.
    pub ssl_trusted_certificate: Option<String>,
    /// 0 = one worker per available core.
    pub workers: usize,
    pub pin_cores: bool,
    /// Explicit CPU list to pin workers to (worker i on `cpus[i % len]`); empty = cores 0..n.
    pub cpus: Vec<usize>,
    /// "stdout", "stderr", "off" or a file path.
    pub access_log: String,
    /// "text" (nginx-like line) or "json".
    pub access_log_format: String,
    /// Seconds to receive a whole request head (nginx `client_header_timeout`).
    pub client_header_timeout: f64,
    /// Seconds between two reads of a request body (nginx `client_body_timeout`).
    pub client_body_timeout: f64,
    /// Seconds an idle keep-alive client connection is kept (nginx `keepalive_timeout`).
    pub keepalive_timeout: f64,
    /// Seconds between two writes to a client (nginx `send_timeout`).
    pub send_timeout: f64,
    /// Longest request line accepted; longer gets 414.
    pub max_request_line: usize,
    /// Largest request head (request line + headers) accepted; larger gets 431.
    pub max_header_size: usize,
    /// Most header fields accepted in one request; more gets 431.
    pub max_headers: usize,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    pub graceful_shutdown_timeout: f64,
    /// "auto" (io_uring, falling back to epoll), "io_uring" or "epoll".
    pub driver: String,
    /// Set IORING_SETUP_COOP_TASKRUN + SINGLE_ISSUER (+ DEFER_TASKRUN) on the rings.
    pub io_uring_flags: bool,
    /// Also set IORING_SETUP_DEFER_TASKRUN (needs `io_uring_flags`; kernel 6.1+).
    pub io_uring_defer_taskrun: bool,
    /// io_uring submission queue entries per worker.
    pub io_uring_entries: u32,
    /// Reload automatically when the config file's contents change (checked every second).
    pub watch_config: bool,
    /// Control API (health status), loopback-only by default; "off" disables it.
    pub control_listen: String,
    /// When every node of an upstream is unhealthy, use them all anyway (APISIX's behaviour).
    pub healthcheck_fail_open: bool,
    /// Relay long response bodies with splice(2) instead of copying them through user space.
    pub splice: bool,
    /// TCP_NOTSENT_LOWAT (bytes) on the socket a body is spliced to, while it is; 0 leaves
    /// the kernel's default (no limit on unsent bytes).
    pub splice_lowat: u32,
    /// After each accept, also take connections waiting in a sibling worker's queue.
    pub steal_accepts: bool,
    /// Client connections each worker keeps open at most (nginx's `worker_connections`, whose
    /// APISIX default this is); at the limit the worker stops accepting until one closes.
    /// 0: no limit.
    pub max_connections: u32,
    /// Accept request header names containing `_` (nginx `underscores_in_headers`). Off:
    /// such headers are dropped, since CGI/WSGI-style servers read `X_Real_IP` as
    /// `X-Real-IP`.
    pub underscores_in_headers: bool,
    /// HTTP/2 from clients (`[gateway.http2]`).
    pub http2: Http2Config,
    /// The `proxy-cache` plugin's zones (`[gateway.proxy_cache]`).
    pub proxy_cache: super::proxy_cache::ProxyCacheConfig,
}

/// HTTP/2 from clients: which listeners speak it and its limits. The defaults follow
/// nginx's `http2_*` directives where it has one, else the `h2` crate's.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// TLS listeners offer `h2` by ALPN (APISIX `ssl.listen[].enable_http2`, on by default).
    pub enable: bool,
    /// Plain listeners also take HTTP/2 with prior knowledge (h2c; APISIX
    /// `node_listen[].enable_http2`).
    pub h2c: bool,
    /// Streams a client may have open at once (nginx `http2_max_concurrent_streams`).
    pub max_concurrent_streams: u32,
    /// Largest decoded header list (HPACK-decoded names and values, 32 bytes each more);
    /// larger is refused.
    pub max_header_list_size: u32,
    /// The HPACK dynamic table a client may make us keep.
    pub header_table_size: u32,
    /// Each stream's receive window: how much request body a client may send ahead.
    pub initial_window_size: u32,
    /// The connection's receive window (all streams together).
    pub connection_window_size: u32,
    /// Largest frame payload we accept.
    pub max_frame_size: u32,
    /// Streams a client may reset before we accept them, pending at once (rapid reset,
    /// CVE-2023-44487): more is a GOAWAY (ENHANCE_YOUR_CALM).
    pub max_pending_accept_reset_streams: u32,
    /// Streams we may reset for a client's protocol errors before the connection is closed
    /// with a GOAWAY.
    pub max_local_error_reset_streams: u32,
    /// Requests served on one connection before it is closed gracefully (nginx
    /// `keepalive_requests`).
    pub max_requests: u32,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            enable: true,
            h2c: false,
            max_concurrent_streams: 128,
            max_header_list_size: 32 * 1024,
            header_table_size: 4096,
            initial_window_size: 65_535,
            connection_window_size: 1 << 20,
            max_frame_size: 16_384,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            max_requests: 1000,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: vec!["0.0.0.0:9080".into()],
            listen_tls: Vec::new(),
            fallback_sni: None,
            ssl_handshake_timeout: 60.0,
            ssl_trusted_certificate: None,
            workers: 0,
            pin_cores: true,
            cpus: Vec::new(),
            access_log: "stdout".into(),
            access_log_format: "text".into(),
            client_header_timeout: 60.0,
            client_body_timeout: 60.0,
            keepalive_timeout: 60.0,
            send_timeout: 60.0,
            max_request_line: 8192,
            max_header_size: 32 * 1024,
            max_headers: 100,
            graceful_shutdown_timeout: 30.0,
            driver: "auto".into(),
            io_uring_flags: true,
            io_uring_defer_taskrun: false,
            io_uring_entries: 1024,
            watch_config: true,
            control_listen: "127.0.0.1:9090".into(),
            healthcheck_fail_open: true,
            splice: true,
            splice_lowat: 16384,
            steal_accepts: true,
            max_connections: 10620,
            underscores_in_headers: false,
            http2: Http2Config::default(),
            proxy_cache: Default::default(),
        }
    }
}

/// An upstream: nodes plus everything about talking to them (APISIX `schema_def.upstream`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default, deserialize_with = "opt_id")]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub desc: Option<String>,
    /// Key-value tags (Admin API `label` filter).
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default = "default_lb_type", rename = "type")]
    pub lb_type: String,
    pub nodes: NodesConfig,
    /// Absent = number of nodes - 1.
    #[serde(default)]
    pub retries: Option<i64>,
    /// Seconds; absent or 0 = no limit.
    #[serde(default)]
    pub retry_timeout: Option<f64>,
    #[serde(default)]
    pub timeout: Option<TimeoutConfig>,
    #[serde(default)]
    pub keepalive_pool: Option<KeepalivePoolConfig>,
    #[serde(default = "default_pass_host")]
    pub pass_host: String,
    #[serde(default)]
    pub upstream_host: Option<String>,
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// TLS towards the nodes (`scheme = "https"`).
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    /// For `chash`: `vars` (default), `header`, `cookie`, `consumer`, `vars_combinations`.
    #[serde(default)]
    pub hash_on: Option<String>,
    /// For `chash`: the variable, header or cookie name, or the template.
    #[serde(default)]
    pub key: Option<String>,
    /// Active and passive health checks.
    #[serde(default)]
    pub checks: Option<super::ChecksConfig>,
}

/// An upstream's `tls` block (APISIX's, plus `sni`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM certificate shown to nodes that ask for one (with `client_key`).
    #[serde(default)]
    pub client_cert: Option<String>,
    /// PEM key, or encrypted with the data_encryption keyring.
    #[serde(default)]
    pub client_key: Option<String>,
    /// An `ssls` object of type `client` holding the certificate and key.
    #[serde(default)]
    pub client_cert_id: Option<String>,
    /// Verify the node's certificate (APISIX's default: false).
    #[serde(default)]
    pub verify: bool,
    /// The name sent as SNI and verified, whatever the Host sent upstream (beyond APISIX).
    #[serde(default)]
    pub sni: Option<String>,
}

fn default_lb_type() -> String {
    "roundrobin".into()
}
fn default_pass_host() -> String {
    "pass".into()
}
fn default_scheme() -> String {
    "http".into()
}

/// Nodes in either of APISIX's two forms.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum NodesConfig {
    /// `{ "127.0.0.1:9001" = 3 }`
    Map(BTreeMap<String, i64>),
    /// `[{ host = "127.0.0.1", port = 9001, weight = 3 }]`
    List(Vec<NodeConfig>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub host: String,
    #[serde(default)]
    pub port: Option<i64>,
    pub weight: i64,
    #[serde(default)]
    pub priority: i64,
}

/// Per-phase timeouts in seconds (fractions allowed); all three are required, as in APISIX.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConfig {
    pub connect: f64,
    pub send: f64,
    pub read: f64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeepalivePoolConfig {
    pub size: i64,
    pub idle_timeout: f64,
    pub requests: i64,
}

impl Default for KeepalivePoolConfig {
    fn default() -> Self {
        KeepalivePoolConfig {
            size: 320,
            idle_timeout: 60.0,
            requests: 1000,
        }
    }
}

/// A service: a reusable upstream (and later plugins) that routes point to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default, deserialize_with = "opt_id")]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub desc: Option<String>,
    /// Key-value tags (Admin API `label` filter).
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "opt_id")]
    pub upstream_id: Option<String>,
    #[serde(default)]
    pub upstream: Option<UpstreamConfig>,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub plugins: Option<Plugins>,
    /// Upgrade requests (WebSocket) are forwarded for its routes that do not say otherwise.
    #[serde(default)]
    pub enable_websocket: Option<bool>,
}

/// Plugin configurations by plugin name (`plugins.traffic-split = { ... }`).
pub type Plugins = BTreeMap<String, serde_json::Value>;

/// A certificate with its key (APISIX `ssls`): the schema and the parsing are checked by
/// the Admin API's `ssl` schema; the compiler builds the SNI table from it.
#[derive(Debug, Clone, Deserialize)]
pub struct SslConfig {
    #[serde(default, deserialize_with = "opt_id")]
    pub id: Option<String>,
    /// `server` (served to clients by SNI) or `client` (shown to upstreams).
    #[serde(rename = "type", default = "ssl_server")]
    pub kind: String,
    pub cert: String,
    /// PEM, or encrypted with the data_encryption keyring.
    pub key: String,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub snis: Option<Vec<String>>,
    /// More certificates for the same names (another key type: RSA beside ECDSA).
    #[serde(default)]
    pub certs: Vec<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default = "ssl_enabled")]
    pub status: i64,
    #[serde(default)]
    pub ssl_protocols: Option<Vec<String>>,
    #[serde(default)]
    pub client: Option<serde_json::Value>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub desc: Option<String>,
}

fn ssl_server() -> String {
    "server".into()
}

fn ssl_enabled() -> i64 {
    1
}

/// A global rule: plugins applied to every request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalRuleConfig {
    #[serde(default, deserialize_with = "opt_id")]
    pub id: Option<String>,
    #[serde(default)]
    pub plugins: Plugins,
}

/// A reusable set of plugins (APISIX `plugin_configs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfigConfig {
    #[serde(default, deserialize_with = "opt_id")]
    pub id: Option<String>,
    #[serde(default)]
    pub desc: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub plugins: Plugins,
}

/// Plugins shared by a group of consumers (APISIX `consumer_groups`): a consumer naming the
/// group in `group_id` runs them, its own plugins winning where both configure one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerGroupConfig {
    #[serde(deserialize_with = "req_id")]
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub desc: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub plugins: Plugins,
}

/// A consumer: an API user that authentication plugins identify (APISIX `consumers`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    pub username: String,
    #[serde(default, deserialize_with = "opt_id")]
    pub id: Option<String>,
    #[serde(default)]
    pub desc: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "opt_id")]
    pub group_id: Option<String>,
    #[serde(default)]
    pub plugins: Option<Plugins>,
}

/// One credential of a consumer (APISIX 3 `consumers/{username}/credentials/{id}`): the
/// configuration of one authentication plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// `{username}/credentials/{id}` in the store; in `config.toml`, the credential's id with
    /// `consumer` naming its consumer.
    pub id: String,
    #[serde(default)]
    pub consumer: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub desc: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub plugins: Option<Plugins>,
}

/// A route: what to match and where to send it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default, deserialize_with = "opt_id")]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub desc: Option<String>,
    /// Key-value tags (Admin API `label` filter); not used for matching.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub uris: Option<Vec<String>>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub vars: Option<Vec<Vec<serde_json::Value>>>,
    /// Client address or CIDR the route is limited to (APISIX `remote_addr`).
    #[serde(default)]
    pub remote_addr: Option<String>,
    /// Client addresses or CIDRs, any of which may match (APISIX `remote_addrs`).
    #[serde(default)]
    pub remote_addrs: Option<Vec<String>>,
    #[serde(default)]
    pub priority: i64,
    /// 1 = enabled, 0 = disabled (never matched).
    #[serde(default = "default_status")]
    pub status: i64,
    #[serde(default)]
    pub timeout: Option<TimeoutConfig>,
    /// Forward `Upgrade` requests (WebSocket) and relay both ways after a 101 (APISIX's
    /// field; unset: the service's, else off, and the Upgrade header is not forwarded).
    #[serde(default)]
    pub enable_websocket: Option<bool>,
    #[serde(default, deserialize_with = "opt_id")]
    pub service_id: Option<String>,
    /// A plugin config whose plugins this route takes (its own win on a conflict).
    #[serde(default, deserialize_with = "opt_id")]
    pub plugin_config_id: Option<String>,
    #[serde(default, deserialize_with = "opt_id")]
    pub upstream_id: Option<String>,
    #[serde(default)]
    pub upstream: Option<UpstreamConfig>,
    #[serde(default)]
    pub plugins: Option<Plugins>,
}

fn default_status() -> i64 {
    1
}

/// Demo backends started by the gateway process itself (`[[demo.backends]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    pub backends: Vec<DemoBackendConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoBackendConfig {
    pub listen: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// APISIX ids are strings or positive integers; both are compared as strings. (A visitor,
/// not an untagged enum: untagged buffers every value first, a cost 10,000 routes feel.)
fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct IdVisitor;
    impl<'de> serde::de::Visitor<'de> for IdVisitor {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string or an integer")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(IdVisitor)
        }
    }
    d.deserialize_option(IdVisitor)
}

/// A required id, a string or an integer as APISIX takes it.
fn req_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    opt_id(d)?.ok_or_else(|| serde::de::Error::custom("missing id"))
}
