//! The TLS client configuration for `https://` etcd endpoints (`[deployment.etcd.tls]`):
//! rustls with the ring provider, etcd's certificate checked against `ca` (or the system's
//! bundle), an optional client certificate, and `verify = false` for test clusters only.

use crate::config::EtcdTlsConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// Where Debian keeps the system's CAs (package ca-certificates).
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Builds the client configuration; errors name the field.
pub fn client_config(tls: &EtcdTlsConfig) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("deployment.etcd.tls: {e}"))?;
    let builder = if tls.verify {
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
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    };
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

fn certs(field: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{field}: {path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{field}: {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{field}: {path}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// `verify = false`: any certificate is taken (the handshake's signatures are still checked).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
