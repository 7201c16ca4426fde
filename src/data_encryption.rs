//! APISIX's `data_encryption`: secret fields (an SSL object's private keys) are stored
//! encrypted, AES-CBC with each keyring entry as both key and IV (16 bytes: AES-128, 32:
//! AES-256), PKCS#7 padding, base64. Encryption uses the first entry; decryption tries each.
//! A value that still reads as PEM (`---...`) is plain and passes through, as APISIX does,
//! so stores and etcd clusters written by APISIX with its default keyring are read as they
//! are.
//!
//! The keyring is a process setting (`[deployment.data_encryption]`), set once at start.

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::sync::OnceLock;

/// APISIX's default keyring.
pub const DEFAULT_KEYRING: [&str; 2] = ["qeddd145sfvddff3", "edd1c9f0985e76a2"];

static KEYRING: OnceLock<Vec<Vec<u8>>> = OnceLock::new();

/// Sets the keyring (empty: fields are stored as given). Entries that are not 16 or 32
/// bytes are refused, naming the field.
pub fn init(enabled: bool, keyring: &[String]) -> Result<(), String> {
    let mut keys = Vec::new();
    if enabled {
        for (i, k) in keyring.iter().enumerate() {
            if k.len() != 16 && k.len() != 32 {
                return Err(format!(
                    "keyring[{i}]: a key is 16 bytes (AES-128) or 32 (AES-256), not {}",
                    k.len()
                ));
            }
            keys.push(k.as_bytes().to_vec());
        }
    }
    let _ = KEYRING.set(keys);
    Ok(())
}

fn keyring() -> &'static [Vec<u8>] {
    KEYRING.get_or_init(|| {
        DEFAULT_KEYRING
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .collect()
    })
}

/// Encrypts a PEM value with the first key; anything else (already encrypted) as it is.
pub fn encrypt(value: &str) -> String {
    match value.starts_with("---") {
        true => seal(value),
        false => value.to_string(),
    }
}

/// Encrypts a secret that is not PEM (a key-auth key, a password: APISIX's `encrypt_fields`)
/// with the first key. Kept as written: a reference (`$env://`, `$secret://`), and a value
/// that already decrypts (stored before, sent back by a PATCH or a PUT of what a GET gave),
/// which the data plane would decrypt anyway.
pub fn encrypt_text(value: &str) -> String {
    let reference = value.starts_with("$env://") || value.starts_with("$secret://");
    let encrypted = !value.starts_with("---") && decrypt(value).is_ok();
    match reference || encrypted {
        true => value.to_string(),
        false => seal(value),
    }
}

/// `value` encrypted with the first key, base64 as APISIX stores it (as it is without keys).
fn seal(value: &str) -> String {
    let Some(key) = keyring().first() else {
        return value.to_string();
    };
    let data = value.as_bytes();
    let out = match key.len() {
        16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(key, key)
            .map(|c| c.encrypt_padded_vec::<Pkcs7>(data)),
        _ => cbc::Encryptor::<aes::Aes256>::new_from_slices(key, &key[..16])
            .map(|c| c.encrypt_padded_vec::<Pkcs7>(data)),
    };
    match out {
        Ok(bytes) => B64.encode(bytes),
        Err(_) => value.to_string(),
    }
}

/// The plain value: PEM as it is, otherwise decrypted with the first key that fits.
pub fn decrypt(value: &str) -> Result<String, String> {
    if value.starts_with("---") || keyring().is_empty() {
        return Ok(value.to_string());
    }
    let bytes = B64
        .decode(value.trim())
        .map_err(|_| "base64 decode ssl key failed".to_string())?;
    for key in keyring() {
        let plain = match key.len() {
            16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, key)
                .ok()
                .and_then(|c| c.decrypt_padded_vec::<Pkcs7>(&bytes).ok()),
            _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, &key[..16])
                .ok()
                .and_then(|c| c.decrypt_padded_vec::<Pkcs7>(&bytes).ok()),
        };
        if let Some(text) = plain.and_then(|p| String::from_utf8(p).ok()) {
            return Ok(text);
        }
    }
    Err("decrypt ssl key failed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_apisix_vector() {
        let pem = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n";
        let enc = encrypt(pem);
        assert_ne!(enc, pem);
        assert_eq!(decrypt(&enc).unwrap(), pem);
        assert_eq!(encrypt(&enc), enc, "already encrypted: as it is");
        assert_eq!(decrypt(pem).unwrap(), pem, "plain PEM passes through");
        // AES-128-CBC, key = iv = "qeddd145sfvddff3", PKCS#7: what APISIX's default
        // keyring makes of "hello" (openssl enc -aes-128-cbc -K 7165... -iv 7165... -a).
        assert_eq!(decrypt("RdO7hElVO+FhS5u1spmKUQ==").unwrap(), "hello");
        assert!(decrypt("not base64!").is_err());
    }
}
