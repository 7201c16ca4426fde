//! What the rate-limiting plugins (limit-count, limit-req, limit-conn) share: the fields that
//! say what a request counts as and how a refusal looks, and waiting out a delay.

use super::{Answer, Flow};
use crate::limit::key::LimitKey;
use serde::Deserialize;
use std::time::Duration;

fn remote_addr() -> String {
    "remote_addr".into()
}
fn var() -> String {
    "var".into()
}
fn local() -> String {
    "local".into()
}
fn code_503() -> u16 {
    503
}

/// The fields every limit plugin has, with APISIX's defaults.
#[derive(Deserialize)]
pub(super) struct Common {
    #[serde(default = "remote_addr")]
    pub key: String,
    #[serde(default = "var")]
    pub key_type: String,
    #[serde(default = "code_503")]
    pub rejected_code: u16,
    #[serde(default)]
    pub rejected_msg: Option<String>,
    #[serde(default = "local")]
    pub policy: String,
    #[serde(default)]
    pub allow_degradation: bool,
}

impl Common {
    pub fn limit_key(&self) -> Result<LimitKey, String> {
        LimitKey::parse(&self.key_type, &self.key)
    }

    /// Refuses a policy other than `local` (until Redis-backed limits exist for the plugin).
    pub fn local_only(&self) -> Result<(), String> {
        match self.policy.as_str() {
            "local" => Ok(()),
            other => Err(format!("policy \"{other}\" is not supported yet")),
        }
    }

    /// The refusal, as APISIX makes it: `rejected_code` with `{"error_msg": rejected_msg}`,
    /// or with the status's reason phrase when no message is configured.
    pub fn rejection(&self) -> Answer {
        let code = self.rejected_code;
        let msg = self.rejected_msg.as_deref();
        Answer::error(code, msg.unwrap_or(crate::http::reason_phrase(code)))
    }
}

/// Waits out an admitted request's delay (as APISIX: not under a millisecond), or gives the
/// refusal.
pub(super) async fn after_delay(admitted: Result<Duration, Flow>) -> Flow {
    match admitted {
        Ok(delay) if delay >= Duration::from_millis(1) => {
            // Boxed: the timer lives only while a request waits.
            Box::pin(monoio::time::sleep(delay)).await;
            Flow::Continue
        }
        Ok(_) => Flow::Continue,
        Err(refused) => refused,
    }
}
