use thiserror::Error;

/// A host name compilation needed and did not find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// Where it is configured (`upstreams[0] (id "u").nodes."api.internal:80"`).
    pub field: String,
    pub host: String,
    pub port: u16,
}

/// Why a config was refused. Every variant names what the user has to fix.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// TOML syntax, an unknown field or a wrong type; the message carries line and field.
    #[error("invalid config: {0}")]
    Syntax(String),
    /// A value that parses but breaks a rule; `field` is a path such as
    /// `upstreams[0] (id "demo").nodes`.
    #[error("invalid config: {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Compilation met node host names not resolved yet: the control plane resolves them
    /// and compiles again (see `dns.rs`); a user never sees this one.
    #[error("host names not resolved yet: {}", .0.iter().map(|n| n.host.as_str()).collect::<Vec<_>>().join(", "))]
    Unresolved(Vec<Unresolved>),
}

/// How errors point at an object: `routes[3] (id "r3")`, its list and position in the
/// file and its id. Written only when a message needs it, so a large table compiles without
/// formatting a name per object.
#[derive(Debug, Clone, Copy)]
pub struct ObjectName<'a> {
    pub kind: &'static str,
    pub index: usize,
    pub id: Option<&'a str>,
}

impl std::fmt::Display for ObjectName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.id {
            Some(id) => write!(f, "{}[{}] (id \"{id}\")", self.kind, self.index),
            None => write!(f, "{}[{}]", self.kind, self.index),
        }
    }
}

impl ConfigError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
