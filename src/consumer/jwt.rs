//! `jwt-auth` credentials: how a consumer's tokens are verified (APISIX's consumer fields:
//! `key`, `secret`, `algorithm`, `public_key`, `base64_secret`, `lifetime_grace_period`,
//! `exp`), checked and turned into a ready verification key when the snapshot is built.

use crate::config::ConfigError;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};

/// How one consumer's tokens are verified.
pub struct JwtCredential {
    pub algorithm: Algorithm,
    /// The algorithm's name as tokens carry it in `alg`.
    pub alg_name: &'static str,
    pub key: DecodingKey,
    /// Seconds of clock leeway for `exp` and `nbf`.
    pub grace: u64,
}

impl std::fmt::Debug for JwtCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtCredential")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

const FIELDS: &[&str] = &[
    "key",
    "secret",
    "algorithm",
    "public_key",
    "exp",
    "base64_secret",
    "lifetime_grace_period",
];

/// The algorithms APISIX names, and ours for each (ES512 has none: P-521 is not in the JWT
/// library).
fn algorithm(name: &str) -> Option<(Algorithm, &'static str)> {
    Some(match name {
        "HS256" => (Algorithm::HS256, "HS256"),
        "HS384" => (Algorithm::HS384, "HS384"),
        "HS512" => (Algorithm::HS512, "HS512"),
        "RS256" => (Algorithm::RS256, "RS256"),
        "RS384" => (Algorithm::RS384, "RS384"),
        "RS512" => (Algorithm::RS512, "RS512"),
        "ES256" => (Algorithm::ES256, "ES256"),
        "ES384" => (Algorithm::ES384, "ES384"),
        "PS256" => (Algorithm::PS256, "PS256"),
        "PS384" => (Algorithm::PS384, "PS384"),
        "PS512" => (Algorithm::PS512, "PS512"),
        "EdDSA" => (Algorithm::EdDSA, "EdDSA"),
        _ => return None,
    })
}

/// Parses a consumer's `jwt-auth` config at `field`: its `key` and how to verify its tokens.
/// `secret` resolves `$env://` and encrypted values.
pub fn parse(
    field: &str,
    conf: &serde_json::Value,
    secret: impl Fn(&str, &str) -> Result<String, ConfigError>,
) -> Result<(String, JwtCredential), ConfigError> {
    let invalid = |name: &str, why: &str| ConfigError::invalid(format!("{field}.{name}"), why);
    let Some(object) = conf.as_object() else {
        return Err(ConfigError::invalid(field, "wrong type: expected object"));
    };
    if let Some(other) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ConfigError::invalid(
            field,
            format!("additional properties forbidden, found {other}"),
        ));
    }
    let text = |name: &str| -> Result<Option<&String>, ConfigError> {
        match object.get(name) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(serde_json::Value::String(_)) => Err(invalid(name, "must not be empty")),
            Some(_) => Err(invalid(name, "wrong type: expected string")),
        }
    };
    let number = |name: &str, min: u64| -> Result<Option<u64>, ConfigError> {
        match object.get(name) {
            None => Ok(None),
            Some(v) => match v.as_u64().filter(|&n| n >= min) {
                Some(n) => Ok(Some(n)),
                None => Err(invalid(
                    name,
                    &format!("expected an integer of at least {min}"),
                )),
            },
        }
    };
    let key = text("key")?
        .ok_or_else(|| ConfigError::invalid(field, "property \"key\" is required"))?
        .clone();
    let alg_text = text("algorithm")?.map_or("HS256", |s| s.as_str());
    let (algorithm, alg_name) = algorithm(alg_text).ok_or_else(|| {
        invalid(
            "algorithm",
            &format!("\"{alg_text}\" is not supported (HS256/384/512, RS256/384/512, ES256/384, PS256/384/512, EdDSA)"),
        )
    })?;
    number("exp", 1)?;
    let grace = number("lifetime_grace_period", 0)?.unwrap_or(0);
    let base64_secret = match object.get("base64_secret") {
        None => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("base64_secret", "wrong type: expected boolean")),
    };
    let key_of =
        |e: jsonwebtoken::errors::Error| invalid("public_key", &format!("not a usable key: {e}"));
    let decoding = if alg_name.starts_with("HS") {
        let Some(s) = text("secret")? else {
            return Err(ConfigError::invalid(
                field,
                "property \"secret\" is required when using HS based algorithms",
            ));
        };
        let s = secret(s, &format!("{field}.secret"))?;
        match base64_secret {
            true => DecodingKey::from_secret(
                &base64::engine::general_purpose::STANDARD
                    .decode(s.as_bytes())
                    .map_err(|_| {
                        invalid(
                            "secret",
                            "base64_secret required but the secret is not in base64 format",
                        )
                    })?,
            ),
            false => DecodingKey::from_secret(s.as_bytes()),
        }
    } else {
        let Some(pem) = text("public_key")? else {
            return Err(ConfigError::invalid(field, "missing valid public key"));
        };
        let pem = secret(pem, &format!("{field}.public_key"))?;
        match alg_name {
            a if a.starts_with("RS") || a.starts_with("PS") => {
                DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(key_of)?
            }
            a if a.starts_with("ES") => DecodingKey::from_ec_pem(pem.as_bytes()).map_err(key_of)?,
            _ => DecodingKey::from_ed_pem(pem.as_bytes()).map_err(key_of)?,
        }
    };
    Ok((
        key,
        JwtCredential {
            algorithm,
            alg_name,
            key: decoding,
            grace,
        },
    ))
}
