//! TLS towards upstreams (APISIX's `scheme = "https"` and upstream `tls` block): one rustls
//! client configuration per upstream, compiled with the snapshot.
//!
//! - `tls.verify` (APISIX's default: false, as nginx's `proxy_ssl_verify off`) checks the
//!   node's certificate against `[gateway] ssl_trusted_certificate` (default: the system's
//!   CA bundle) and the name sent as SNI; a failure is a 502 with the reason in the log.
//! - SNI is the host sent upstream (per `pass_host`, `upstream_host` for `rewrite`, without
//!   its port), or `tls.sni` (beyond APISIX) when set. An IP address is verified against the
//!   certificate's IP addresses and sent without SNI, as TLS requires.
//! - `tls.client_cert` + `tls.client_key`, or `tls.client_cert_id` naming an `ssls` object
//!   of type `client`, is shown to nodes that ask (mutual TLS).
//! - Pooled connections are keyed by node, SNI and this configuration's identity (client
//!   certificate and verification), so one is never reused for another name or identity.
//!   Sessions are resumed from the configuration's in-memory cache (rustls's, shared by the
//!   cores: a lock taken per new upstream connection, never per request).

use crate::config::{ConfigError, SslConfig, UpstreamTlsConfig};
use crate::tls::client::{self, certs, SYSTEM_CAS};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

/// An upstream's TLS.
#[derive(Debug)]
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    /// `tls.sni`: the name sent whatever the Host.
    pub sni: Option<Arc<str>>,
    /// Tells apart configurations that must not share connections (client certificate,
    /// verification); never 0.
    pub identity: u64,
}

impl UpstreamTls {
    /// Compiles `scheme = "https"` with its `tls` block; errors name `name.tls.*`.
    pub fn build(
        name: &str,
        tls: Option<&UpstreamTlsConfig>,
        ssls: &[Arc<SslConfig>],
        roots: &Arc<RootCertStore>,
        alpn: &[u8],
    ) -> Result<UpstreamTls, ConfigError> {
        let default = UpstreamTlsConfig::default();
        let tls = tls.unwrap_or(&default);
        let field = |f: &str| format!("{name}.tls.{f}");
        let builder = client::builder(tls.verify.then(|| roots.clone()))
            .map_err(|e| ConfigError::invalid(format!("{name}.tls"), e.to_string()))?;
        let mut identity = std::collections::hash_map::DefaultHasher::new();
        tls.verify.hash(&mut identity);
        let pair = match (&tls.client_cert_id, &tls.client_cert, &tls.client_key) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(ConfigError::invalid(
                    field("client_cert_id"),
                    "goes without client_cert and client_key",
                ))
            }
            (Some(id), None, None) => {
                let ssl = ssls
                    .iter()
                    .find(|s| s.id.as_deref() == Some(id.as_str()))
                    .ok_or_else(|| {
                        ConfigError::invalid(
                            field("client_cert_id"),
                            format!("failed to fetch ssl info by ssl id [{id}], not found"),
                        )
                    })?;
                if ssl.kind != "client" {
                    return Err(ConfigError::invalid(
                        field("client_cert_id"),
                        format!("failed to fetch ssl info by ssl id [{id}], wrong ssl type"),
                    ));
                }
                Some((ssl.cert.as_str(), ssl.key.as_str(), "client_cert_id"))
            }
            (None, Some(c), Some(k)) => Some((c.as_str(), k.as_str(), "client_cert")),
            (None, None, None) => None,
            _ => {
                return Err(ConfigError::invalid(
                    field("client_cert"),
                    "client_cert and client_key go together",
                ))
            }
        };
        let mut config = match pair {
            Some((cert, key, f)) => {
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ConfigError::invalid(field(f), format!("failed to parse: {e}")))?;
                if chain.is_empty() {
                    return Err(ConfigError::invalid(field(f), "no PEM certificate found"));
                }
                let key = crate::data_encryption::decrypt(key)
                    .map_err(|e| ConfigError::invalid(field("client_key"), e))?;
                let der = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| {
                    ConfigError::invalid(field("client_key"), format!("failed to parse: {e}"))
                })?;
                cert.hash(&mut identity);
                builder
                    .with_client_auth_cert(chain, der)
                    .map_err(|e| ConfigError::invalid(field(f), e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        alpn.hash(&mut identity);
        let sni = match &tls.sni {
            Some(s) => {
                ServerName::try_from(s.as_str())
                    .map_err(|e| ConfigError::invalid(field("sni"), e.to_string()))?;
                Some(Arc::from(s.as_str()))
            }
            None => None,
        };
        Ok(UpstreamTls {
            config: Arc::new(config),
            sni,
            identity: identity.finish() | 1,
        })
    }

    /// The pool key part for connections made for `sni` (never 0, which is plain TCP).
    pub fn pool_key(&self, sni: &[u8]) -> u64 {
        // Not a weak hash: SNI may come from the client's Host. A collision still cannot
        // share a connection: the pool compares the name itself (`UpstreamConn::sni`).
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write(sni);
        h.write_u64(self.identity);
        h.finish() | 1
    }
}

/// The name to send and verify for a Host value: without its port (and brackets).
pub fn sni_of(host: &[u8]) -> &[u8] {
    if let Some(rest) = host.strip_prefix(b"[") {
        let end = rest.iter().position(|&b| b == b']').unwrap_or(rest.len());
        return &rest[..end];
    }
    match host.iter().rposition(|&b| b == b':') {
        // One colon: host:port. More: a bare IPv6 address.
        Some(i) if host.iter().filter(|&&b| b == b':').count() == 1 => &host[..i],
        _ => host,
    }
}

static LOADED: Mutex<Option<(Option<String>, Arc<RootCertStore>)>> = Mutex::new(None);

/// The CAs trusted for upstream certificates: PEM bundle `path`, or the system's. Read once
/// per path (a change of the setting reads the new file).
pub fn roots(path: Option<&str>) -> Result<Arc<RootCertStore>, String> {
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((p, roots)) = &*loaded {
        if p.as_deref() == path {
            return Ok(roots.clone());
        }
    }
    let mut roots = RootCertStore::empty();
    let list = match path {
        Some(p) => certs("gateway.ssl_trusted_certificate", p)?,
        None => certs("system CAs", SYSTEM_CAS).unwrap_or_else(|e| {
            crate::warn!(
                "{e}: upstreams with tls.verify trust no CA until ssl_trusted_certificate is set"
            );
            Vec::new()
        }),
    };
    for c in list {
        // The system bundle holds a few certificates webpki cannot parse; skip those.
        let _ = roots.add(c);
    }
    if path.is_some() && roots.is_empty() {
        return Err("no usable CA certificate in it".into());
    }
    let roots = Arc::new(roots);
    *loaded = Some((path.map(str::to_string), roots.clone()));
    Ok(roots)
}

/// The CAs the last compiled snapshot trusts (health probes use them); empty before any.
pub fn current_roots() -> Arc<RootCertStore> {
    let loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    loaded
        .as_ref()
        .map_or_else(|| Arc::new(RootCertStore::empty()), |(_, r)| r.clone())
}

/// A client configuration for health probes: verifying against `roots`, or not at all.
pub fn probe_config(verify: bool, roots: &Arc<RootCertStore>) -> Arc<ClientConfig> {
    let mut config = client::builder(verify.then(|| roots.clone()))
        .expect("the provider supports the default protocol versions")
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::sni_of;

    #[test]
    fn sni_drops_the_port() {
        assert_eq!(sni_of(b"a.test:8443"), b"a.test");
        assert_eq!(sni_of(b"a.test"), b"a.test");
        assert_eq!(sni_of(b"[::1]:443"), b"::1");
        assert_eq!(sni_of(b"::1"), b"::1");
        assert_eq!(sni_of(b"10.0.0.1:80"), b"10.0.0.1");
    }
}
