//! Consumers as the data plane sees them: who a credential belongs to, looked up by the
//! credential itself in a per-snapshot index, so authenticating a request is one hash lookup
//! whatever the number of consumers.
//!
//! A credential is a consumer's own authentication plugin config (`consumers[].plugins`) or
//! one of its `credentials` (APISIX 3). Secrets are indexed by a keyed digest (two SipHash
//! values under keys drawn at random when the index is built, 128 bits): the lookup compares
//! digests, never the secret's bytes, so its time tells a client nothing about how much of a
//! key it guessed, and a client cannot predict which digests its guesses land on (nor does
//! the index hold a secret in clear). It replaced SHA-256, which cost 0.1 µs per request.

pub mod jwt;

use crate::config::{ConfigError, ConsumerConfig, CredentialConfig, ObjectName};
use crate::fold_hash::FoldHash;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

/// The authentication plugins a consumer or credential may configure.
pub const AUTH_PLUGINS: &[&str] = &["key-auth", "basic-auth", "jwt-auth"];

/// Who a request authenticated as.
#[derive(Debug)]
pub struct Identity {
    pub username: Arc<str>,
    /// The credential's id (`X-Credential-Identifier`), when it came from a credential object.
    pub credential: Option<Arc<str>>,
    /// The consumer's `labels.custom_id` (`X-Consumer-Custom-ID`).
    pub custom_id: Option<Arc<str>>,
    /// The consumer's group (`consumer_group_id`).
    pub group: Option<Arc<str>>,
}

/// A secret's keyed digest ([`Consumers::digest`]).
type Digest = [u64; 2];

/// The snapshot's consumers, indexed by credential.
#[derive(Debug, Default)]
pub struct Consumers {
    /// The digest's two random keys.
    digest_keys: [RandomState; 2],
    /// `key-auth` keys. (The map's own hash need not resist flooding: its keys are digests
    /// under keys a client does not know.)
    keys: HashMap<Digest, Arc<Identity>, FoldHash>,
    /// `basic-auth` users: the password's digest and who it is.
    users: HashMap<String, (Digest, Arc<Identity>)>,
    /// `jwt-auth` credentials, by the `key` claim their tokens carry (an identifier, not a
    /// secret: the token's signature is what authenticates).
    jwts: HashMap<String, (jwt::JwtCredential, Arc<Identity>)>,
    /// Every consumer by username (`anonymous_consumer`).
    by_name: HashMap<Arc<str>, Arc<Identity>>,
}

/// A secret as configured: encrypted with the data_encryption keyring (as APISIX stores
/// `key-auth.key`) or in clear; `$env://NAME` reads it from the environment.
pub(crate) fn secret(value: &str, field: &str) -> Result<String, ConfigError> {
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
        let mut names: HashMap<&str, Arc<Identity>> = HashMap::new();
        for (i, c) in consumers.iter().enumerate() {
            let username: Arc<str> = c.username.as_str().into();
            let custom_id: Option<Arc<str>> = c
                .labels
                .as_ref()
                .and_then(|l| l.get("custom_id"))
                .map(|s| s.as_str().into());
            let name = ObjectName {
                kind: "consumers",
                index: i,
                id: Some(&c.username),
            };
            let identity = Arc::new(Identity {
                username: username.clone(),
                credential: None,
                custom_id,
                group: c.group_id.as_deref().map(Into::into),
            });
            names.insert(&c.username, identity.clone());
            index.by_name.insert(username, identity.clone());
            if let Some(plugins) = &c.plugins {
                index.add(&name.to_string(), plugins, &identity)?;
            }
        }
        for (i, cred) in credentials.iter().enumerate() {
            let Some(plugins) = &cred.plugins else {
                continue;
            };
            let (owner, id) = match (&cred.consumer, cred.id.split_once("/credentials/")) {
                (_, Some((c, id))) => (c, id),
                (Some(c), None) => (c.as_str(), cred.id.as_str()),
                (None, None) => continue, // refused by the consumer checks
            };
            let Some(consumer) = names.get(owner) else {
                continue; // refused by the consumer checks
            };
            let name = ObjectName {
                kind: "credentials",
                index: i,
                id: Some(&cred.id),
            };
            let identity = Arc::new(Identity {
                credential: Some(id.into()),
                username: consumer.username.clone(),
                custom_id: consumer.custom_id.clone(),
                group: consumer.group.clone(),
            });
            index.add(&name.to_string(), plugins, &identity)?;
        }
        Ok(index)
    }

    /// Indexes the credentials among the plugins of object `name` (a consumer or a credential).
    fn add(
        &mut self,
        name: &str,
        plugins: &crate::config::Plugins,
        identity: &Arc<Identity>,
    ) -> Result<(), ConfigError> {
        if let Some(conf) = plugins.get("key-auth") {
            let field = format!("{name}.plugins.key-auth");
            let [key] = fields(&field, conf, ["key"])?;
            let key = self.digest(secret(key, &format!("{field}.key"))?.as_bytes());
            if let Some(taken) = self.keys.get(&key) {
                return Err(ConfigError::invalid(
                    format!("{field}.key"),
                    format!("duplicate key found with consumer: {}", taken.username),
                ));
            }
            self.keys.insert(key, identity.clone());
        }
        if let Some(conf) = plugins.get("basic-auth") {
            let field = format!("{name}.plugins.basic-auth");
            let [user, password] = fields(&field, conf, ["username", "password"])?;
            let password = secret(password, &format!("{field}.password"))?;
            if let Some((_, taken)) = self.users.get(user.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{field}.username"),
                    format!("duplicate username found with consumer: {}", taken.username),
                ));
            }
            let entry = (self.digest(password.as_bytes()), identity.clone());
            self.users.insert(user.clone(), entry);
        }
        if let Some(conf) = plugins.get("jwt-auth") {
            let field = format!("{name}.plugins.jwt-auth");
            let (key, credential) = jwt::parse(&field, conf, secret)?;
            if let Some((_, taken)) = self.jwts.get(&key) {
                return Err(ConfigError::invalid(
                    format!("{field}.key"),
                    format!("duplicate key found with consumer: {}", taken.username),
                ));
            }
            self.jwts.insert(key, (credential, identity.clone()));
        }
        Ok(())
    }

    /// The consumer whose `key-auth` key is `key`.
    pub fn by_key(&self, key: &[u8]) -> Option<&Arc<Identity>> {
        self.keys.get(&self.digest(key))
    }

    /// A secret's keyed digest: SipHash-1-3 under each of the two random keys.
    fn digest(&self, secret: &[u8]) -> Digest {
        let [a, b] = &self.digest_keys;
        [a.hash_one(secret), b.hash_one(secret)]
    }

    /// The consumer called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Identity>> {
        self.by_name.get(name)
    }

    /// The `jwt-auth` credential whose tokens carry `key`, and whose it is.
    pub fn by_jwt_key(&self, key: &str) -> Option<&(jwt::JwtCredential, Arc<Identity>)> {
        self.jwts.get(key)
    }

    /// The consumer whose `basic-auth` user and password these are. An unknown user costs
    /// the same digest and comparison as a wrong password, so the answer's time does not
    /// tell a client which user names exist.
    pub fn by_user(&self, user: &[u8], password: &[u8]) -> Option<&Arc<Identity>> {
        let given = self.digest(password);
        let entry = std::str::from_utf8(user)
            .ok()
            .and_then(|u| self.users.get(u));
        let expected = entry.map_or([0; 2], |(d, _)| *d);
        let same = ((given[0] ^ expected[0]) | (given[1] ^ expected[1])) == 0;
        entry.filter(|_| same).map(|(_, who)| who)
    }
}

/// The string fields `names` of a credential config, all required, no other field allowed;
/// empty values refused. Errors in APISIX's words, naming the field.
fn fields<'a, const N: usize>(
    field: &str,
    conf: &'a serde_json::Value,
    names: [&str; N],
) -> Result<[&'a String; N], ConfigError> {
    let Some(object) = conf.as_object() else {
        return Err(ConfigError::invalid(field, "wrong type: expected object"));
    };
    if let Some(other) = object.keys().find(|k| !names.contains(&k.as_str())) {
        return Err(ConfigError::invalid(
            field,
            format!("additional properties forbidden, found {other}"),
        ));
    }
    let mut out = Vec::with_capacity(N);
    for n in names {
        match object.get(n) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => out.push(s),
            Some(serde_json::Value::String(_)) => {
                return Err(ConfigError::invalid(
                    format!("{field}.{n}"),
                    "must not be empty",
                ))
            }
            Some(_) => {
                return Err(ConfigError::invalid(
                    format!("{field}.{n}"),
                    "wrong type: expected string",
                ))
            }
            None => {
                return Err(ConfigError::invalid(
                    field,
                    format!("property \"{n}\" is required"),
                ))
            }
        }
    }
    Ok(out.try_into().expect("one per name"))
}
