//! `checks` on an upstream: APISIX's health-check schema, field names and defaults.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksConfig {
    /// Required when `checks` is given (passive checks alone cannot bring a node back).
    #[serde(default)]
    pub active: Option<ActiveConfig>,
    #[serde(default)]
    pub passive: Option<PassiveConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveConfig {
    #[serde(rename = "type")]
    pub check_type: String,
    pub timeout: f64,
    pub concurrency: i64,
    pub host: Option<String>,
    pub port: Option<i64>,
    pub http_path: String,
    pub https_verify_certificate: bool,
    pub req_headers: Vec<String>,
    pub healthy: ActiveHealthy,
    pub unhealthy: ActiveUnhealthy,
}

impl Default for ActiveConfig {
    fn default() -> Self {
        ActiveConfig {
            check_type: "http".into(),
            timeout: 1.0,
            concurrency: 10,
            host: None,
            port: None,
            http_path: "/".into(),
            https_verify_certificate: true,
            req_headers: Vec::new(),
            healthy: ActiveHealthy::default(),
            unhealthy: ActiveUnhealthy::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveHealthy {
    pub interval: i64,
    pub successes: i64,
    pub http_statuses: Vec<i64>,
}

impl Default for ActiveHealthy {
    fn default() -> Self {
        ActiveHealthy {
            interval: 1,
            successes: 2,
            http_statuses: vec![200, 302],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveUnhealthy {
    pub interval: i64,
    pub http_failures: i64,
    pub tcp_failures: i64,
    pub timeouts: i64,
    pub http_statuses: Vec<i64>,
}

impl Default for ActiveUnhealthy {
    fn default() -> Self {
        ActiveUnhealthy {
            interval: 1,
            http_failures: 5,
            tcp_failures: 2,
            timeouts: 3,
            http_statuses: vec![429, 404, 500, 501, 502, 503, 504, 505],
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveConfig {
    #[serde(rename = "type")]
    pub check_type: Option<String>,
    pub healthy: PassiveHealthy,
    pub unhealthy: PassiveUnhealthy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthy {
    pub successes: i64,
    pub http_statuses: Vec<i64>,
}

impl Default for PassiveHealthy {
    fn default() -> Self {
        PassiveHealthy {
            successes: 5,
            http_statuses: vec![
                200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305,
                306, 307, 308,
            ],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveUnhealthy {
    pub http_failures: i64,
    pub tcp_failures: i64,
    pub timeouts: i64,
    pub http_statuses: Vec<i64>,
}

impl Default for PassiveUnhealthy {
    fn default() -> Self {
        PassiveUnhealthy {
            http_failures: 5,
            tcp_failures: 2,
            timeouts: 7,
            http_statuses: vec![429, 500, 503],
        }
    }
}
