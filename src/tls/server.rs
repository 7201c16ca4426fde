//! The rustls server configuration each snapshot serves new handshakes with: its
//! certificate table as the resolver, TLS 1.2 and 1.3, ALPN `http/1.1`, and session tickets
//! from one ticketer per process. A new snapshot (a certificate added, replaced, removed)
//! brings a new configuration for new handshakes; open connections keep theirs. Because
//! every configuration shares the process's ticketer (ChaCha20-Poly1305 keys, rotated every
//! 6 hours, the previous key still accepted), a client resumes whichever core it lands on
//! next and across configuration changes.

use super::CertStore;
use rustls::server::ProducesTickets;
use rustls::ServerConfig;
use std::sync::{Arc, OnceLock};

/// The process's ticketer.
fn ticketer() -> Option<Arc<dyn ProducesTickets>> {
    static TICKETER: OnceLock<Option<Arc<dyn ProducesTickets>>> = OnceLock::new();
    TICKETER
        .get_or_init(|| match rustls::crypto::ring::Ticketer::new() {
            Ok(t) => Some(t),
            Err(e) => {
                crate::error!("TLS session tickets are off: {e}");
                None
            }
        })
        .clone()
}

/// The configuration for a snapshot's certificates.
pub fn config(certs: Arc<CertStore>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if let Some(t) = ticketer() {
        config.ticketer = t;
        config.send_tls13_tickets = 2;
    }
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certs::tests::{handshake_with, make, ssl};

    #[test]
    fn a_client_resumes_on_another_configuration() {
        let dir = std::env::temp_dir().join(format!("sg-tls-server-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let a = make(&dir, "a", "DNS:a.test", false);
        let store = |list: &[Arc<crate::config::SslConfig>]| {
            Arc::new(CertStore::build(list, None).unwrap())
        };
        // Two snapshots (or two cores): distinct configurations, one ticketer.
        let first = config(store(&[ssl(&["a.test"], std::slice::from_ref(&a))])).unwrap();
        let second = config(store(&[ssl(
            &["a.test", "b.test"],
            std::slice::from_ref(&a),
        )]))
        .unwrap();
        let client = crate::tls::certs::tests::client_config(&dir, false);
        let kind = |server: &Arc<ServerConfig>| handshake_with(server, &client, Some("a.test")).1;
        assert_eq!(kind(&first), Some(rustls::HandshakeKind::Full));
        assert_eq!(kind(&second), Some(rustls::HandshakeKind::Resumed));
        assert_eq!(kind(&first), Some(rustls::HandshakeKind::Resumed));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
