//! The rustls server configuration each snapshot serves new handshakes with: its
//! certificate table as the resolver, TLS 1.2 and 1.3, ALPN `http/1.1`, and session tickets
//! from one ticketer per process. A new snapshot (a certificate added, replaced, removed)
//! brings a new configuration for new handshakes; open connections keep theirs. Because
//! every configuration shares the process's ticketer (ChaCha20-Poly1305 keys, rotated every
//! 6 hours, the previous key still accepted), a client resumes whichever core it lands on
//! next and across configuration changes.

use super::stream::Choice;
use super::CertStore;
use crate::config::{ConfigError, ObjectName, SslConfig};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ProducesTickets, WebPkiClientVerifier};
use rustls::{DistinguishedName, ServerConfig, SupportedProtocolVersion};
use std::sync::{Arc, OnceLock};

/// Protocol versions a profile allows.
type Versions = Vec<&'static SupportedProtocolVersion>;

/// The process's ticketer.
fn ticketer() -> Option<Arc<dyn ProducesTickets>> {
    static TICKETER: OnceLock<Option<Arc<dyn ProducesTickets>>> = OnceLock::new();
    TICKETER
        .get_or_init(|| match crate::tls::ticketer() {
            Ok(t) => Some(t),
            Err(e) => {
                crate::error!("TLS session tickets are off: {e}");
                None
            }
        })
        .clone()
}

/// How handshakes are answered for one snapshot: the SNI table, and one configuration per
/// profile. Profile 0 serves every object with APISIX's defaults (TLS 1.2 and 1.3, no
/// client certificate); an object with `client.ca` or its own `ssl_protocols` gets a
/// profile of its own, chosen from the ClientHello's name before the handshake goes on.
pub struct ServerTls {
    pub certs: Arc<CertStore>,
    profiles: Vec<Profile>,
}

struct Profile {
    config: Arc<ServerConfig>,
    client_cert_required: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("profiles", &self.profiles.len())
            .finish()
    }
}

impl ServerTls {
    /// Compiles the `ssls` objects; None when no certificate is served. Errors name the
    /// object and field.
    pub fn build(
        ssls: &[Arc<SslConfig>],
        fallback_sni: Option<&str>,
        h2: bool,
    ) -> Result<Option<ServerTls>, ConfigError> {
        let provider = Arc::new(crate::tls::provider());
        // Profiles other than the default, made while the table is built.
        let mut special: Vec<(Versions, Option<Arc<dyn ClientCertVerifier>>)> = Vec::new();
        let certs = CertStore::build(ssls, fallback_sni, |i, ssl| {
            let name = ObjectName {
                kind: "ssls",
                index: i,
                id: ssl.id.as_deref(),
            };
            let versions = versions(ssl, &name)?;
            let verifier = match client_ca(ssl) {
                Some((ca, depth)) => Some(client_verifier(&provider, ca, depth, &name)?),
                None => None,
            };
            if verifier.is_none() && versions.len() == 2 {
                return Ok(0);
            }
            special.push((versions, verifier));
            Ok(special.len())
        })?;
        if certs.is_empty() {
            return Ok(None);
        }
        let certs = Arc::new(certs);
        let make = |versions: &[&'static SupportedProtocolVersion],
                    verifier: Option<Arc<dyn ClientCertVerifier>>|
         -> Result<Profile, ConfigError> {
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .map_err(|e| ConfigError::invalid("ssls", e.to_string()))?;
            let required = verifier.is_some();
            let builder = match verifier {
                Some(v) => builder.with_client_cert_verifier(v),
                None => builder.with_no_client_auth(),
            };
            let mut config = builder.with_cert_resolver(certs.clone());
            config.alpn_protocols = match h2 {
                true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                false => vec![b"http/1.1".to_vec()],
            };
            if let Some(t) = ticketer() {
                config.ticketer = t;
                config.send_tls13_tickets = 2;
            }
            Ok(Profile {
                config: Arc::new(config),
                client_cert_required: required,
            })
        };
        let mut profiles = vec![make(rustls::DEFAULT_VERSIONS, None)?];
        for (versions, verifier) in special {
            profiles.push(make(&versions, verifier)?);
        }
        Ok(Some(ServerTls { certs, profiles }))
    }

    /// The configuration for a ClientHello: None when no certificate serves its name.
    pub fn choose(&self, hello: &ClientHello<'_>) -> Option<Choice> {
        let p = &self.profiles[self.certs.profile(hello.server_name())?];
        Some(Choice {
            config: p.config.clone(),
            client_cert_required: p.client_cert_required,
        })
    }

    /// The default profile's configuration (tests).
    pub fn default_config(&self) -> Arc<ServerConfig> {
        self.profiles[0].config.clone()
    }
}

/// The versions an object allows (`ssl_protocols`, APISIX's default TLS 1.2 and 1.3).
/// TLS 1.1 is not offered by rustls: listed beside others it is left out; alone, refused.
fn versions(
    ssl: &SslConfig,
    name: &ObjectName<'_>,
) -> Result<Vec<&'static SupportedProtocolVersion>, ConfigError> {
    let Some(list) = &ssl.ssl_protocols else {
        return Ok(rustls::DEFAULT_VERSIONS.to_vec());
    };
    let mut out = Vec::new();
    for p in list {
        match p.as_str() {
            "TLSv1.3" => out.push(&rustls::version::TLS13),
            "TLSv1.2" => out.push(&rustls::version::TLS12),
            "TLSv1.1" => {}
            other => {
                return Err(ConfigError::invalid(
                    format!("{name}.ssl_protocols"),
                    format!("unknown protocol \"{other}\""),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(ConfigError::invalid(
            format!("{name}.ssl_protocols"),
            "TLSv1.1 is not supported (rustls speaks TLSv1.2 and TLSv1.3)",
        ));
    }
    Ok(out)
}

/// `client.ca` and `client.depth` (APISIX's default depth 1).
fn client_ca(ssl: &SslConfig) -> Option<(&str, usize)> {
    let client = ssl.client.as_ref()?;
    let ca = client.get("ca")?.as_str()?;
    let depth = client.get("depth").and_then(|d| d.as_u64()).unwrap_or(1);
    Some((ca, depth as usize))
}

fn client_verifier(
    provider: &Arc<CryptoProvider>,
    ca: &str,
    depth: usize,
    name: &ObjectName<'_>,
) -> Result<Arc<dyn ClientCertVerifier>, ConfigError> {
    let field = || format!("{name}.client.ca");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        let cert =
            cert.map_err(|e| ConfigError::invalid(field(), format!("failed to parse: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ConfigError::invalid(field(), e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ConfigError::invalid(field(), "no PEM certificate found"));
    }
    // Optional at the TLS layer: a client that sends none completes the handshake and gets
    // nginx's 400 answer, rather than an alert it cannot explain to its user.
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ConfigError::invalid(field(), e.to_string()))?;
    Ok(Arc::new(Depth { inner, depth }))
}

/// A client verifier that also bounds the chain's length as `ssl_verify_depth` does: with
/// depth 1 the client's certificate must be issued by a configured CA directly.
#[derive(Debug)]
struct Depth {
    inner: Arc<dyn ClientCertVerifier>,
    depth: usize,
}

impl ClientCertVerifier for Depth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if intermediates.len() + 1 > self.depth {
            return Err(rustls::Error::General(format!(
                "client certificate chain longer than client.depth {}",
                self.depth
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
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
        let config = |list: &[Arc<crate::config::SslConfig>]| {
            ServerTls::build(list, None, true)
                .unwrap()
                .unwrap()
                .default_config()
        };
        // Two snapshots (or two cores): distinct configurations, one ticketer.
        let first = config(&[ssl(&["a.test"], std::slice::from_ref(&a))]);
        let second = config(&[ssl(&["a.test", "b.test"], std::slice::from_ref(&a))]);
        let client = crate::tls::certs::tests::client_config(&dir, false);
        let kind = |server: &Arc<ServerConfig>| handshake_with(server, &client, Some("a.test")).1;
        assert_eq!(kind(&first), Some(rustls::HandshakeKind::Full));
        assert_eq!(kind(&second), Some(rustls::HandshakeKind::Resumed));
        assert_eq!(kind(&first), Some(rustls::HandshakeKind::Resumed));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
