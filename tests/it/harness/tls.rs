//! TLS for the tests: certificates issued by the test CAs with openssl (see
//! [`super::certificates`]), rustls client configurations for the harness client, and server
//! configurations for TLS backends.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

/// Issues `name.pem`/`name.key` in `dir` for `subj` with subjectAltName `san` (None: a
/// client certificate), signed by `ca` (`ca` or `other`), ECDSA P-256 or RSA 2048.
pub fn issue(dir: &Path, name: &str, subj: &str, san: Option<&str>, ca: &str, rsa: bool) {
    let ext = match san {
        Some(san) => format!("subjectAltName={san}\nextendedKeyUsage=serverAuth\n"),
        None => "extendedKeyUsage=clientAuth\n".to_string(),
    };
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    let key = if rsa {
        "-newkey rsa:2048 -nodes"
    } else {
        "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    };
    let cmds = [
        format!("req {key} -keyout {name}.key -out {name}.csr -subj {subj}"),
        format!("x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial -out {name}.pem -days 2 -extfile {name}.ext"),
    ];
    for cmd in cmds {
        super::openssl(dir, &cmd);
    }
}

/// `dir/name.pem` and `dir/name.key` as text.
pub fn pair(dir: &Path, name: &str) -> (String, String) {
    let read = |ext: &str| std::fs::read_to_string(dir.join(format!("{name}.{ext}"))).unwrap();
    (read("pem"), read("key"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(dir: &Path, ca: &str) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in
        rustls::pki_types::CertificateDer::pem_file_iter(dir.join(format!("{ca}.pem"))).unwrap()
    {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

fn chain_and_key(
    dir: &Path,
    name: &str,
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(dir.join(format!("{name}.pem")))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).unwrap();
    (chain, key)
}

/// A client trusting the test CA, showing certificate `client` when asked. Connections
/// made with one configuration share its session cache (resumption).
pub fn client_config(dir: &Path, client: Option<&str>) -> Arc<rustls::ClientConfig> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(dir, "ca"));
    let mut config = match client {
        Some(name) => {
            let (chain, key) = chain_and_key(dir, name);
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS backend's configuration: certificate `name`; client certificates from the test CA
/// required when `require_client` is set.
pub fn server_config(dir: &Path, name: &str, require_client: bool) -> Arc<rustls::ServerConfig> {
    let b = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = if require_client {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(dir, "ca")),
            provider(),
        )
        .build()
        .unwrap();
        b.with_client_cert_verifier(verifier)
    } else {
        b.with_no_client_auth()
    };
    let (chain, key) = chain_and_key(dir, name);
    Arc::new(b.with_single_cert(chain, key).unwrap())
}

/// The subject CN and key size of the certificate a server showed.
pub fn served(c: &super::Client) -> String {
    let cert = &c.session().peer_certificates().expect("a certificate")[0];
    // The PEM of it, read back by openssl.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    let subject = out.lines().next().unwrap_or("").to_string();
    let kind = if out.contains("rsaEncryption") {
        "RSA"
    } else {
        "EC"
    };
    format!("{subject} {kind}")
}
