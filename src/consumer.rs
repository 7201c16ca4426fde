//! Consumers as the data plane sees them: who a credential belongs to, looked up by the
//! credential itself in a per-snapshot index, so authenticating a request is one hash lookup
//! whatever the number of consumers.
//!
//! A credential is a consumer's own authentication plugin config (`consumers[].plugins`) or
//! one of its `credentials` (APISIX 3). Secrets are indexed by their SHA-256 digest: the
//! lookup compares digests, never the secret's bytes, so its time tells a client nothing
//! about how much of a key it guessed (and the index holds no secret in clear).

use crate::config::{ConfigError, ConsumerConfig, CredentialConfig, ObjectName};
use std::collections::HashMap;
use std::sync::Arc;

/// The authentication plugins a consumer or credential may configure.
pub const AUTH_PLUGINS: &[&str] = &["key-auth"];

/// Who a request authenticated as.
#[derive(Debug)]
pub struct Identity {
    pub username: Arc<str>,
    /// The credential's id (`X-Credential-Identifier`), when it came from a credential object.
    pub credential: Option<Arc<str>>,
    /// The consumer's `labels.custom_id` (`X-Consumer-Custom-ID`).
    pub custom_id: Option<Arc<str>>,
}

/// A secret's digest.
type Digest = [u8; 32];

/// The snapshot's consumers, indexed by credential.
#[derive(Debug, Default)]
pub struct Consumers {
    /// `key-auth` keys.
    keys: HashMap<Digest, Arc<Identity>>,
}

fn digest(secret: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A secret as configured: encrypted with the data_encryption keyring (as APISIX stores
/// `key-auth.key`) or in clear; `$env://NAME` reads it from the environment.
fn secret(value: &str, field: &str) -> Result<String, ConfigError> {
    if let Some(var) = value.strip_prefix("$env://") {
        return std::env::var(var).map_err(|_| {
            ConfigError::invalid(field, format!("environment variable {var} is not set"))
        });
    }
    // As APISIX: a value that does not decrypt is taken as written.
    Ok(crate::data_encryption::decrypt(value).unwrap_or_else(|_| value.to_string()))
}

impl Consumers {
    /// Builds the index; errors name the object and field (a missing or duplicate key).
    pub fn build(
        consumers: &[Arc<ConsumerConfig>],
        credentials: &[Arc<CredentialConfig>],
    ) -> Result<Consumers, ConfigError> {
        let mut index = Consumers::default();
        let mut names: HashMap<&str, (Arc<str>, Option<Arc<str>>)> = HashMap::new();
        for (i, c) in consumers.iter().enumerate() {
            let username: Arc<str> = c.username.as_str().into();
            let custom_id: Option<Arc<str>> = c
                .labels
                .as_ref()
                .and_then(|l| l.get("custom_id"))
                .map(|s| s.as_str().into());
            names.insert(&c.username, (username.clone(), custom_id.clone()));
            let Some(conf) = c.plugins.as_ref().and_then(|p| p.get("key-auth")) else {
                continue;
            };
            let name = ObjectName {
                kind: "consumers",
                index: i,
                id: Some(&c.username),
            };
            let identity = Identity {
                username,
                credential: None,
                custom_id,
            };
            index.add_key(&format!("{name}.plugins.key-auth"), conf, identity)?;
        }
        for (i, cred) in credentials.iter().enumerate() {
            let Some(conf) = cred.plugins.as_ref().and_then(|p| p.get("key-auth")) else {
                continue;
            };
            let (owner, id) = match (&cred.consumer, cred.id.split_once("/credentials/")) {
                (_, Some((c, id))) => (c, id),
                (Some(c), None) => (c.as_str(), cred.id.as_str()),
                (None, None) => continue, // refused by the consumer checks
            };
            let Some((username, custom_id)) = names.get(owner) else {
                continue; // refused by the consumer checks
            };
            let name = ObjectName {
                kind: "credentials",
                index: i,
                id: Some(&cred.id),
            };
            let identity = Identity {
                username: username.clone(),
                credential: Some(id.into()),
                custom_id: custom_id.clone(),
            };
            index.add_key(&format!("{name}.plugins.key-auth"), conf, identity)?;
        }
        Ok(index)
    }

    fn add_key(
        &mut self,
        field: &str,
        conf: &serde_json::Value,
        identity: Identity,
    ) -> Result<(), ConfigError> {
        let key = match conf.get("key") {
            Some(serde_json::Value::String(k)) => k,
            Some(_) => {
                return Err(ConfigError::invalid(
                    format!("{field}.key"),
                    "wrong type: expected string",
                ))
            }
            None => return Err(ConfigError::invalid(field, "property \"key\" is required")),
        };
        if let Some(other) = conf
            .as_object()
            .and_then(|o| o.keys().find(|k| *k != "key"))
        {
            return Err(ConfigError::invalid(
                field,
                format!("additional properties forbidden, found {other}"),
            ));
        }
        let key = secret(key, &format!("{field}.key"))?;
        if key.is_empty() {
            return Err(ConfigError::invalid(
                format!("{field}.key"),
                "must not be empty",
            ));
        }
        if let Some(taken) = self.keys.get(&digest(key.as_bytes())) {
            return Err(ConfigError::invalid(
                format!("{field}.key"),
                format!("duplicate key found with consumer: {}", taken.username),
            ));
        }
        self.keys.insert(digest(key.as_bytes()), Arc::new(identity));
        Ok(())
    }

    /// The consumer whose `key-auth` key is `key`.
    pub fn by_key(&self, key: &[u8]) -> Option<&Arc<Identity>> {
        self.keys.get(&digest(key))
    }
}
