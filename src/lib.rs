//! Shardgate: an API gateway and reverse proxy built as a sharded thread-per-core io_uring
//! proxy, with Apache APISIX's object model (routes, services, upstreams).
//!
//! Where things live:
//! - [`config`]: the TOML file as the user writes it (APISIX field names and defaults);
//! - [`snapshot`]: validation and compilation into the immutable form every core reads;
//! - [`control`]: the control plane (load, reload on SIGHUP, graceful shutdown);
//! - [`worker`]: the data plane, one pinned monoio runtime per core;
//! - [`http`]: HTTP/1.1 framing (heads, chunked bodies, header rules);
//! - [`route`]: the router; [`upstream`]: balancers, keepalive pool;
//! - [`log`]: access and event logs; [`demo`]: built-in demo backends;
//! - [`fuzzing`]: the fuzzing harnesses (`fuzz/`, and the property tests in `tests/`).

pub mod admin;
pub mod cache;
pub mod config;
pub mod consumer;
pub mod control;
pub mod data_encryption;
pub mod demo;
pub mod dns;
pub mod etcd;
pub mod fold_hash;
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod http2;
pub mod limit;
pub mod log;
pub mod logger;
pub mod metrics;
pub mod net;
pub mod plugin;
pub mod proxy;
pub mod redis;
pub mod resources;
pub mod route;
pub mod schema;
pub mod snapshot;
pub mod spares;
pub mod store;
pub mod tls;
pub mod tracing;
pub mod upstream;
pub mod vars;
pub mod worker;
