//! The TLS client configuration for `https://` etcd endpoints (`[deployment.etcd.tls]`):
//! rustls with the ring provider, etcd's certificate checked against `ca` (or the system's
//! bundle), an optional client certificate, and `verify = false` for test clusters only.

use crate::config::EtcdTlsConfig;
use crate::tls::client::{certs, SYSTEM_CAS};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::{ClientConfig, RootCertStore};
use std::sync::Arc;

/// Builds the client configuration; errors name the field.
pub fn client_config(tls: &EtcdTlsConfig) -> Result<Arc<ClientConfig>, String> {
    let roots = if tls.verify {
        let (field, path) = match &tls.ca {
            Some(p) => ("deployment.etcd.tls.ca", p.as_str()),
            None => (
                "deployment.etcd.tls.ca (unset: the system's CAs)",
                SYSTEM_CAS,
            ),
        };
        let mut roots = RootCertStore::empty();
        for cert in certs(field, path)? {
            roots
                .add(cert)
                .map_err(|e| format!("{field}: {path}: {e}"))?;
        }
        Some(Arc::new(roots))
    } else {
        None
    };
    let builder =
        crate::tls::client::builder(roots).map_err(|e| format!("deployment.etcd.tls: {e}"))?;
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = certs("deployment.etcd.tls.cert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("deployment.etcd.tls.key: {key}: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("deployment.etcd.tls.cert: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("deployment.etcd.tls: cert and key go together".into()),
    };
    Ok(Arc::new(config))
}
