//! `ssls`: what APISIX checks beyond the schema (`apisix/ssl.lua`'s `check_ssl_conf`): each
//! certificate parses, each private key parses and is of a kind TLS can sign with, `certs`
//! and `keys` pair up, a client CA parses; and, beyond APISIX, each key matches its
//! certificate. Private keys are stored encrypted
//! (`data_encryption.rs`), as APISIX stores them, and checked decrypted.

use crate::data_encryption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

/// The checks of an object being written (beyond APISIX, as #11 asks: its certificates
/// must be valid now).
pub(super) fn check_new(v: &Value) -> Result<(), String> {
    for pem in ["cert"].iter().filter_map(|f| v.get(*f)).chain(
        v.get("certs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten(),
    ) {
        let Some(Ok(der)) = pem
            .as_str()
            .and_then(|p| CertificateDer::pem_slice_iter(p.as_bytes()).next())
        else {
            continue; // reported by `check`
        };
        crate::tls::validity::Validity::of(&der)
            .and_then(|val| val.check(crate::log::now_secs()))
            .map_err(|e| format!("failed to parse cert: {e}"))?;
    }
    check(v)
}

/// The checks, with APISIX's messages.
pub(super) fn check(v: &Value) -> Result<(), String> {
    let text = |f: &str| v.get(f).and_then(Value::as_str);
    if let (Some(cert), Some(key)) = (text("cert"), text("key")) {
        pair(cert, Some(key))?;
    }
    if text("type") == Some("client") {
        return Ok(());
    }
    let list = |f: &str| -> Vec<&str> {
        v.get(f)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    let (certs, keys) = (list("certs"), list("keys"));
    if certs.len() != keys.len() {
        return Err("mismatched number of certs and keys".into());
    }
    for (i, (cert, key)) in certs.iter().zip(&keys).enumerate() {
        pair(cert, Some(key))
            .map_err(|e| format!("failed to handle cert-key pair[{}]: {e}", i + 1))?;
    }
    if let Some(ca) = v
        .get("client")
        .and_then(|c| c.get("ca"))
        .and_then(Value::as_str)
    {
        pair(ca, None).map_err(|e| format!("failed to validate client_cert: {e}"))?;
    }
    Ok(())
}

/// A certificate (chain) and its key, as APISIX's `validate`.
fn pair(cert: &str, key: Option<&str>) -> Result<(), String> {
    let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("failed to parse cert: {e}"))?;
    if certs.is_empty() {
        return Err("failed to parse cert: no PEM certificate found".into());
    }
    let Some(key) = key else {
        return Ok(());
    };
    let key = data_encryption::decrypt(key)
        .map_err(|_| "failed to decrypt previous encrypted key".to_string())?;
    let der = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| format!("failed to parse key: {e}"))?;
    // Parses the certificate and the key, and checks that they belong together (APISIX
    // leaves that to the first handshake).
    let provider = crate::tls::provider();
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("failed to parse key: {e}"))?;
    let certified = rustls::sign::CertifiedKey::new(certs, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err("the private key does not match the certificate".into())
        }
        Err(e) => Err(format!("failed to parse cert: {e}")),
    }
}

/// Encrypts the private keys (`key`, `keys[]`) that are still PEM.
pub(super) fn encrypt_keys(v: &mut Value) {
    if let Some(Value::String(k)) = v.get_mut("key") {
        *k = data_encryption::encrypt(k);
    }
    if let Some(Value::Array(keys)) = v.get_mut("keys") {
        for k in keys {
            if let Value::String(s) = k {
                *s = data_encryption::encrypt(s);
            }
        }
    }
}
