//! `[plugin_attr]`: process-wide settings of plugins that hold a resource of their own (the
//! Prometheus exporter's listener, the span exporter's collector), read at start as APISIX
//! reads `plugin_attr` from its config.yaml.

use serde::Deserialize;

/// `[plugin_attr]`: settings of plugins that hold a process-wide resource (an exporter, a
/// collector connection), by plugin name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginAttr {
    #[serde(default)]
    pub prometheus: PrometheusAttr,
    #[serde(default)]
    pub opentelemetry: crate::tracing::Settings,
}

/// `[plugin_attr.prometheus]` (APISIX's names and defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusAttr {
    /// Where the exporter listens: `"ip:port"`, or APISIX's `{ ip, port }`.
    pub export_addr: ExportAddr,
    pub export_uri: String,
    pub metric_prefix: String,
    /// false: no exporter listener.
    pub enable_export_server: bool,
    /// Latency histogram buckets, milliseconds.
    pub default_buckets: Option<Vec<f64>>,
    /// Label sets each worker records at most (Shardgate's; past it a request is counted in
    /// `shardgate_metrics_series_dropped_total` only).
    pub max_series: usize,
}

impl Default for PrometheusAttr {
    fn default() -> PrometheusAttr {
        PrometheusAttr {
            export_addr: ExportAddr::Text("127.0.0.1:9091".into()),
            export_uri: "/apisix/prometheus/metrics".into(),
            metric_prefix: "apisix_".into(),
            enable_export_server: true,
            default_buckets: None,
            max_series: crate::metrics::MAX_SERIES,
        }
    }
}

/// An exporter address as a string or as APISIX's `{ ip, port }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ExportAddr {
    Text(String),
    Parts { ip: String, port: i64 },
}

impl PrometheusAttr {
    /// The exporter's settings; errors name the field.
    pub fn settings(&self) -> Result<crate::metrics::Settings, super::ConfigError> {
        let field = "plugin_attr.prometheus";
        let text = match &self.export_addr {
            ExportAddr::Text(t) => t.clone(),
            ExportAddr::Parts { port, .. } if !(1..=65535).contains(port) => {
                return Err(super::ConfigError::invalid(
                    format!("{field}.export_addr.port"),
                    format!("{port} is not a port (1-65535)"),
                ))
            }
            ExportAddr::Parts { ip, port } if ip.contains(':') => format!("[{ip}]:{port}"),
            ExportAddr::Parts { ip, port } => format!("{ip}:{port}"),
        };
        let addr: std::net::SocketAddr = text.parse().map_err(|_| {
            super::ConfigError::invalid(
                format!("{field}.export_addr"),
                format!("'{text}' is not an ip:port address"),
            )
        })?;
        if !self.export_uri.starts_with('/') {
            return Err(super::ConfigError::invalid(
                format!("{field}.export_uri"),
                "must start with /",
            ));
        }
        let prefix_ok =
            self.metric_prefix.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_alphabetic() || b == b'_' || (i > 0 && b.is_ascii_digit())
            });
        if !prefix_ok {
            return Err(super::ConfigError::invalid(
                format!("{field}.metric_prefix"),
                "letters, digits and _ only, not starting with a digit",
            ));
        }
        let buckets: Vec<f64> = match &self.default_buckets {
            Some(b) => {
                let ascending = b.windows(2).all(|w| w[0] < w[1]);
                if b.is_empty() || !ascending || b.iter().any(|v| !v.is_finite() || *v <= 0.0) {
                    return Err(super::ConfigError::invalid(
                        format!("{field}.default_buckets"),
                        "expect a non-empty list of positive numbers in ascending order",
                    ));
                }
                b.clone()
            }
            None => crate::metrics::DEFAULT_BUCKETS.to_vec(),
        };
        Ok(crate::metrics::Settings {
            export_addr: self.enable_export_server.then_some(addr),
            export_uri: self.export_uri.clone(),
            metric_prefix: self.metric_prefix.clone(),
            buckets: buckets.into(),
            max_series: self.max_series,
        })
    }
}
