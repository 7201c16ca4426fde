//! The certificates served to clients, by SNI: compiled from the `ssls` objects (type
//! `server`, status 1) into one immutable table per snapshot, and handed to rustls as its
//! certificate resolver. A handshake looks up the exact name first, then the longest
//! wildcard (`*.example.com` covers `a.example.com` and `a.b.example.com`, not
//! `example.com`), then `fallback_sni`; with nothing found it fails, as APISIX's does. An
//! object with `certs`/`keys` beside `cert`/`key` serves a second key type (RSA beside
//! ECDSA): the first whose key can sign with a scheme the client offers is chosen.

use crate::config::{ConfigError, ObjectName, SslConfig};
use crate::fold_hash::FoldHash;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

type Keys = Vec<Arc<CertifiedKey>>;

/// What a name is served with: its certificates, and the handshake profile of the object
/// that named it first (0: the default; others demand a client certificate or limit the
/// protocol versions, see [`super::server`]).
#[derive(Debug, Default)]
struct Entry {
    keys: Keys,
    profile: usize,
}

/// A served certificate, as the status dashboard lists it.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// The `ssls` object's id.
    pub id: String,
    pub snis: Vec<String>,
    /// When it expires: Unix seconds, and as written.
    pub not_after: i64,
    pub not_after_text: String,
}

/// The SNI table.
#[derive(Debug, Default)]
pub struct CertStore {
    /// Every certificate served (first of each object), for the dashboard.
    pub served: Vec<CertInfo>,
    exact: HashMap<String, Entry, FoldHash>,
    /// `.example.com` for `*.example.com`, longest first.
    wildcard: Vec<(String, Entry)>,
    /// The name looked up when a client sends none (APISIX `ssl.fallback_sni`).
    fallback: Option<String>,
}

impl CertStore {
    /// Builds the table; errors name the object and field. Client certificates (`type =
    /// "client"`) and disabled objects are not served. `profile_of` gives each served
    /// object's handshake profile.
    pub fn build(
        ssls: &[Arc<SslConfig>],
        fallback: Option<&str>,
        mut profile_of: impl FnMut(usize, &SslConfig) -> Result<usize, ConfigError>,
    ) -> Result<CertStore, ConfigError> {
        let provider = crate::tls::provider();
        let mut store = CertStore {
            fallback: fallback.map(|f| f.to_ascii_lowercase()),
            ..CertStore::default()
        };
        let mut wildcard: HashMap<String, Entry> = HashMap::new();
        for (i, ssl) in ssls.iter().enumerate() {
            if ssl.kind != "server" || ssl.status != 1 {
                continue;
            }
            let name = ObjectName {
                kind: "ssls",
                index: i,
                id: ssl.id.as_deref(),
            }
            .to_string();
            // A certificate that expired while configured is left out (logged) rather than
            // refusing every later change; writes of expired ones are refused upfront.
            if let Err(e) = current(&ssl.cert) {
                crate::warn!("{name} is not served: {e}");
                continue;
            }
            let mut keys = vec![certified(&provider, &ssl.cert, &ssl.key)
                .map_err(|e| ConfigError::invalid(&name, e))?];
            if ssl.certs.len() != ssl.keys.len() {
                return Err(ConfigError::invalid(
                    format!("{name}.certs"),
                    "mismatched number of certs and keys",
                ));
            }
            for (j, (c, k)) in ssl.certs.iter().zip(&ssl.keys).enumerate() {
                keys.push(
                    certified(&provider, c, k)
                        .map_err(|e| ConfigError::invalid(format!("{name}.certs[{j}]"), e))?,
                );
            }
            let profile = profile_of(i, ssl)?;
            if let Some(v) = validity(&ssl.cert) {
                store.served.push(CertInfo {
                    id: ssl.id.clone().unwrap_or_default(),
                    snis: ssl
                        .snis
                        .iter()
                        .flatten()
                        .chain(ssl.sni.iter())
                        .cloned()
                        .collect(),
                    not_after: v.not_after,
                    not_after_text: v.not_after_text,
                });
            }
            let snis = ssl.snis.iter().flatten().chain(ssl.sni.iter());
            for sni in snis {
                let sni = sni.to_ascii_lowercase();
                let entry = match sni.strip_prefix('*') {
                    Some(suffix) => wildcard.entry(suffix.to_string()),
                    None => store.exact.entry(sni),
                }
                .or_insert_with(|| Entry {
                    keys: Vec::new(),
                    profile,
                });
                entry.keys.extend(keys.iter().cloned());
            }
        }
        store.wildcard = wildcard.into_iter().collect();
        store
            .wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Ok(store)
    }

    /// The certificates for `name` (lower case).
    fn lookup(&self, name: &str) -> Option<&Entry> {
        self.exact.get(name).or_else(|| {
            self.wildcard
                .iter()
                .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
                .map(|(_, entry)| entry)
        })
    }

    /// The handshake profile for a client asking for `name` (any case; none sent: the
    /// fallback name), or None when no certificate serves it.
    pub fn profile(&self, name: Option<&str>) -> Option<usize> {
        let entry = match name {
            Some(n) if n.bytes().any(|b| b.is_ascii_uppercase()) => {
                self.lookup(&n.to_ascii_lowercase())
            }
            Some(n) => self.lookup(n),
            None => self.lookup(self.fallback.as_deref()?),
        }?;
        Some(entry.profile)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = match hello.server_name() {
            Some(n) => n.to_ascii_lowercase(),
            None => self.fallback.clone()?,
        };
        let keys = &self.lookup(&name)?.keys;
        let schemes = hello.signature_schemes();
        keys.iter()
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .cloned()
    }
}

/// The validity period of the first certificate of `pem`.
fn validity(pem: &str) -> Option<super::validity::Validity> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    super::validity::Validity::of(&der).ok()
}

/// Whether the first certificate of `pem` is valid now.
fn current(pem: &str) -> Result<(), String> {
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(pem.as_bytes()).next() else {
        return Ok(()); // the parse error is reported by `certified`
    };
    super::validity::Validity::of(&der)?.check(crate::log::now_secs())
}

/// A certificate chain and its key, checked to belong together.
fn certified(
    provider: &CryptoProvider,
    cert: &str,
    key: &str,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("failed to parse cert: {e}"))?;
    if chain.is_empty() {
        return Err("failed to parse cert: no PEM certificate found".into());
    }
    let key = crate::data_encryption::decrypt(key)?;
    let der = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| format!("failed to parse key: {e}"))?;
    CertifiedKey::from_der(chain, der, provider)
        .map(Arc::new)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key does not match the certificate".into()
            }
            rustls::Error::General(why) if why.contains("failed to parse private key") => {
                "unsupported key type (RSA, ECDSA P-256/P-384 and Ed25519 keys are)".into()
            }
            other => format!("failed to load the certificate and key: {other}"),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// A certificate for `san` (EC, or RSA), signed by a CA in `dir` (made on first use),
    /// with the openssl command: (PEM certificate, PEM key).
    pub(crate) fn make(dir: &Path, name: &str, san: &str, rsa: bool) -> (String, String) {
        let newkey = if rsa {
            "-newkey rsa:2048".to_string()
        } else {
            "-newkey ec -pkeyopt ec_paramgen_curve:P-256".to_string()
        };
        let run = |cmd: String| {
            let out = Command::new("openssl")
                .current_dir(dir)
                .args(cmd.split_whitespace())
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        if !dir.join("ca.pem").exists() {
            run("req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=ca".into());
        }
        std::fs::write(
            dir.join(format!("{name}.cnf")),
            format!("subjectAltName={san}\n"),
        )
        .unwrap();
        run(format!(
            "req {newkey} -nodes -keyout {name}.key -out {name}.csr -subj /CN={name}"
        ));
        run(format!("x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 2 -extfile {name}.cnf"));
        let read = |f: String| std::fs::read_to_string(dir.join(f)).unwrap();
        (read(format!("{name}.pem")), read(format!("{name}.key")))
    }

    /// A server `ssls` object for `snis`: the first pair as `cert`/`key`, the others as
    /// `certs`/`keys`.
    pub(crate) fn ssl(snis: &[&str], pairs: &[(String, String)]) -> Arc<SslConfig> {
        let v = serde_json::json!({
            "snis": snis,
            "cert": pairs[0].0, "key": pairs[0].1,
            "certs": pairs[1..].iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
            "keys": pairs[1..].iter().map(|p| p.1.clone()).collect::<Vec<_>>(),
        });
        Arc::new(serde_json::from_value(v).unwrap())
    }

    /// A client trusting the CA in `dir` (verifying RSA signatures only, when asked).
    pub(crate) fn client_config(dir: &Path, rsa_only: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let mut provider = crate::tls::provider();
        if rsa_only {
            let algs = &mut provider.signature_verification_algorithms;
            let rsa: Vec<_> = algs
                .mapping
                .iter()
                .filter(|(s, _)| {
                    matches!(
                        s,
                        rustls::SignatureScheme::RSA_PSS_SHA256
                            | rustls::SignatureScheme::RSA_PKCS1_SHA256
                    )
                })
                .copied()
                .collect();
            algs.mapping = Box::leak(rsa.into_boxed_slice());
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// A handshake in memory (without SNI when `sni` is None: the client then checks the
    /// certificate as `a.test`'s): the certificate presented and the kind of handshake, or
    /// (None, None) when it failed.
    pub(crate) fn handshake_with(
        server: &Arc<rustls::ServerConfig>,
        client: &Arc<rustls::ClientConfig>,
        sni: Option<&str>,
    ) -> (Option<Vec<u8>>, Option<rustls::HandshakeKind>) {
        let mut client = (**client).clone();
        client.enable_sni = sni.is_some();
        let name =
            rustls::pki_types::ServerName::try_from(sni.unwrap_or("a.test").to_string()).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
        let mut done = false;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            if s.read_tls(&mut &buf[..]).is_err() || s.process_new_packets().is_err() {
                return (None, None);
            }
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            if c.read_tls(&mut &buf[..]).is_err() || c.process_new_packets().is_err() {
                return (None, None);
            }
            // One more round after the handshake: the server's session tickets.
            if done {
                let cert = c.peer_certificates().map(|p| p[0].to_vec());
                return (cert, c.handshake_kind());
            }
            done = !c.is_handshaking() && !s.is_handshaking();
        }
        (None, None)
    }

    fn handshake(
        store: &Arc<CertStore>,
        dir: &Path,
        sni: Option<&str>,
        rsa_only: bool,
    ) -> Option<Vec<u8>> {
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(crate::tls::provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        handshake_with(&Arc::new(server), &client_config(dir, rsa_only), sni).0
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_fallback_and_the_key_type_the_client_takes() {
        let dir = std::env::temp_dir().join(format!("sg-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let a = make(&dir, "a", "DNS:a.test", false);
        let w = make(&dir, "w", "DNS:*.w.test", false);
        let ec = make(&dir, "ec", "DNS:both.test", false);
        let rsa = make(&dir, "rsa", "DNS:both.test", true);
        let der = |pem: &str| {
            CertificateDer::from_pem_slice(pem.as_bytes())
                .unwrap()
                .to_vec()
        };
        let ssls = vec![
            ssl(&["a.test"], std::slice::from_ref(&a)),
            ssl(&["*.w.test"], std::slice::from_ref(&w)),
            ssl(&["both.test"], &[ec.clone(), rsa.clone()]),
        ];
        let store = Arc::new(CertStore::build(&ssls, Some("a.test"), |_, _| Ok(0)).unwrap());
        assert_eq!(
            handshake(&store, &dir, Some("a.test"), false),
            Some(der(&a.0))
        );
        assert_eq!(
            handshake(&store, &dir, Some("A.TEST"), false),
            Some(der(&a.0))
        );
        assert_eq!(
            handshake(&store, &dir, Some("x.w.test"), false),
            Some(der(&w.0))
        );
        // Deeper names are looked up too (the client then checks the certificate's own
        // wildcard, which covers one label).
        assert!(store.lookup("y.x.w.test").is_some());
        assert_eq!(
            handshake(&store, &dir, Some("w.test"), false),
            None,
            "the wildcard needs a label"
        );
        assert_eq!(handshake(&store, &dir, Some("nothing.test"), false), None);
        // Both key types for one name: the client's signature schemes choose.
        assert_eq!(
            handshake(&store, &dir, Some("both.test"), false),
            Some(der(&ec.0))
        );
        assert_eq!(
            handshake(&store, &dir, Some("both.test"), true),
            Some(der(&rsa.0))
        );
        // No SNI: fallback_sni, or a failed handshake without it.
        assert_eq!(handshake(&store, &dir, None, false), Some(der(&a.0)));
        let strict = Arc::new(CertStore::build(&ssls, None, |_, _| Ok(0)).unwrap());
        assert_eq!(handshake(&strict, &dir, None, false), None);

        // A key that is not the certificate's, an encrypted key, a disabled object.
        let err = CertStore::build(
            &[ssl(&["a.test"], &[(a.0.clone(), w.1.clone())])],
            None,
            |_, _| Ok(0),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("ssls[0]") && err.contains("does not match"),
            "{err}"
        );
        let encrypted = (a.0.clone(), crate::data_encryption::encrypt(&a.1));
        let store = Arc::new(
            CertStore::build(&[ssl(&["a.test"], &[encrypted])], None, |_, _| Ok(0)).unwrap(),
        );
        assert_eq!(
            handshake(&store, &dir, Some("a.test"), false),
            Some(der(&a.0))
        );
        let mut off = (*ssl(&["a.test"], std::slice::from_ref(&a))).clone();
        off.status = 0;
        assert!(CertStore::build(&[Arc::new(off)], None, |_, _| Ok(0))
            .unwrap()
            .is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
