//! `jwt-auth` (APISIX priority 2510, rewrite phase): the request carries a JSON Web Token,
//! in header `header` (default `Authorization`, `Bearer ` prefix optional), else query
//! argument `query` (`jwt`), else cookie `cookie` (`jwt`). Its `key_claim_name` claim
//! (`key`) names the consumer's credential; the token must be signed with that credential's
//! algorithm and secret or public key (HS256/384/512, RS*, PS*, ES256/384, EdDSA; `none` and
//! any other algorithm than the credential's are refused), and its `exp` and `nbf`, when
//! present (always, for those listed in `claims_to_verify`), must hold, give or take the
//! credential's `lifetime_grace_period`.
//!
//! Refusals are 401 with `WWW-Authenticate: Bearer realm="jwt"` and APISIX's messages:
//! `Missing JWT token in request`, `JWT token invalid` (not a JWT), `missing user key in JWT
//! token`, and `failed to verify jwt` for everything else. Unlike APISIX, a key no consumer
//! has also gets `failed to verify jwt` (APISIX: `Invalid user key in JWT token`), after
//! the same HMAC work as a wrong signature: the answer does not tell a client which keys
//! exist.
//!
//! Signatures are checked by the `jsonwebtoken` crate (RustCrypto); the token's header and
//! payload are read here only to find the key claim and the timestamps.

use super::{Answer, BuildCtx, CoreState, Flow, PhaseSet, Phases, RequestCtx};
use crate::consumer::Consumers;
use crate::vars::Var;
use base64::Engine;
use serde::Deserialize;
use std::cell::RefCell;
use std::sync::Arc;

fn authorization() -> String {
    "authorization".into()
}
fn jwt() -> String {
    "jwt".into()
}
fn key() -> String {
    "key".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "authorization")]
    header: String,
    #[serde(default = "jwt")]
    query: String,
    #[serde(default = "jwt")]
    cookie: String,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default = "key")]
    key_claim_name: String,
    /// Accepted for APISIX configs; the payload is not kept for other plugins yet.
    #[serde(default)]
    #[allow(dead_code)]
    store_in_ctx: bool,
    #[serde(default = "jwt")]
    realm: String,
    #[serde(default)]
    claims_to_verify: Vec<String>,
    #[serde(default)]
    anonymous_consumer: Option<String>,
}

pub struct JwtAuth {
    consumers: Arc<Consumers>,
    header: String,
    header_var: Var,
    query: String,
    query_var: Var,
    cookie: String,
    cookie_var: Var,
    hide_credentials: bool,
    key_claim_name: String,
    /// `exp` and `nbf` are required (listed in `claims_to_verify`), rather than checked
    /// when present.
    require_exp: bool,
    require_nbf: bool,
    missing: Answer,
    invalid: Answer,
    no_key: Answer,
    failed: Answer,
    anonymous: super::auth::Anonymous,
}

/// Where the token came from (what `hide_credentials` removes).
#[derive(Clone, Copy)]
enum Source {
    Header,
    Query,
    Cookie,
}

/// Why a token was refused (each maps to one of APISIX's messages).
enum Refusal {
    Invalid,
    NoKey,
    Failed,
}

impl JwtAuth {
    pub fn build(conf: &serde_json::Value, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let challenge = format!("Bearer realm=\"{}\"", c.realm);
        let answer = |message: &str| super::auth::unauthorized(&challenge, message);
        Ok(JwtAuth {
            consumers: ctx.consumers.clone(),
            header_var: Var::Http(c.header.to_ascii_lowercase().replace('-', "_")),
            query_var: Var::Arg(c.query.clone()),
            cookie_var: Var::Cookie(c.cookie.clone()),
            require_exp: c.claims_to_verify.iter().any(|n| n == "exp"),
            require_nbf: c.claims_to_verify.iter().any(|n| n == "nbf"),
            missing: answer("Missing JWT token in request"),
            invalid: answer("JWT token invalid"),
            no_key: answer("missing user key in JWT token"),
            failed: answer("failed to verify jwt"),
            anonymous: super::auth::Anonymous::new(c.anonymous_consumer, &challenge),
            header: c.header,
            query: c.query,
            cookie: c.cookie,
            hide_credentials: c.hide_credentials,
            key_claim_name: c.key_claim_name,
        })
    }

    /// The token and where it was found.
    fn token<'r>(&self, ctx: &RequestCtx<'r>) -> Option<(&'r [u8], Source)> {
        if let Some(v) = ctx.vars.var(&self.header_var) {
            let token = match v.get(..7) {
                Some(b"Bearer " | b"bearer ") => &v[7..],
                _ => v,
            };
            return Some((token, Source::Header));
        }
        if let Some(v) = ctx.vars.var(&self.query_var) {
            return Some((v, Source::Query));
        }
        ctx.vars.var(&self.cookie_var).map(|v| (v, Source::Cookie))
    }

    /// Verifies `token`; the credential's identity if it holds.
    fn verify(&self, token: &[u8]) -> Result<&Arc<crate::consumer::Identity>, Refusal> {
        let token = std::str::from_utf8(token).map_err(|_| Refusal::Invalid)?;
        let mut parts = token.split('.');
        let (Some(head), Some(body), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::Invalid);
        };
        let json = |part: &str| -> Result<serde_json::Map<String, serde_json::Value>, Refusal> {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part.trim_end_matches('='))
                .map_err(|_| Refusal::Invalid)?;
            serde_json::from_slice(&bytes).map_err(|_| Refusal::Invalid)
        };
        let (header, payload) = (json(head)?, json(body)?);
        let key = match payload.get(&self.key_claim_name) {
            None | Some(serde_json::Value::Null) => return Err(Refusal::NoKey),
            Some(serde_json::Value::String(k)) => Some(k.as_str()),
            Some(_) => None,
        };
        let signed = &token[..head.len() + 1 + body.len()];
        let Some((credential, who)) = key.and_then(|k| self.consumers.by_jwt_key(k)) else {
            // No such credential: the HMAC work of a wrong signature, the same answer.
            let _ = jsonwebtoken::crypto::verify(signature, signed.as_bytes(), &DUMMY, HS256);
            return Err(Refusal::Failed);
        };
        if header.get("alg").and_then(|a| a.as_str()) != Some(credential.alg_name) {
            return Err(Refusal::Failed);
        }
        let verified = jsonwebtoken::crypto::verify(
            signature,
            signed.as_bytes(),
            &credential.key,
            credential.algorithm,
        );
        if !matches!(verified, Ok(true)) {
            return Err(Refusal::Failed);
        }
        let now = crate::log::now_secs() as f64;
        let grace = credential.grace as f64;
        let claim =
            |name: &str, required: bool, holds: &dyn Fn(f64) -> bool| match payload.get(name) {
                None => !required,
                Some(v) => v.as_f64().is_some_and(holds),
            };
        if !claim("exp", self.require_exp, &|exp| exp > now - grace)
            || !claim("nbf", self.require_nbf, &|nbf| nbf < now + grace)
        {
            return Err(Refusal::Failed);
        }
        Ok(who)
    }

    /// Removes the credential from what the upstream sees.
    fn hide(&self, ctx: &mut RequestCtx<'_>, source: Source) {
        match source {
            Source::Header => ctx.request.headers.remove(&self.header),
            Source::Query => super::auth::hide_query_arg(ctx, &self.query),
            Source::Cookie => {
                let cookies = ctx.vars.var(&Var::Http("cookie".into())).unwrap_or(b"");
                let kept: Vec<&[u8]> = cookies
                    .split(|&b| b == b';')
                    .map(|c| c.trim_ascii())
                    .filter(|c| !c.is_empty())
                    .filter(|c| c.split(|&b| b == b'=').next() != Some(self.cookie.as_bytes()))
                    .collect();
                match kept.is_empty() {
                    true => ctx.request.headers.remove("Cookie"),
                    false => {
                        let value = String::from_utf8_lossy(&kept.join(&b"; "[..])).into_owned();
                        ctx.request.headers.set("Cookie", &value);
                    }
                }
            }
        }
    }
}

const HS256: jsonwebtoken::Algorithm = jsonwebtoken::Algorithm::HS256;

/// The key an unknown credential's token is checked against (to spend the same work).
static DUMMY: std::sync::LazyLock<jsonwebtoken::DecodingKey> =
    std::sync::LazyLock::new(|| jsonwebtoken::DecodingKey::from_secret(b"shardgate-no-such-key"));

impl Phases for JwtAuth {
    fn name(&self) -> &'static str {
        "jwt-auth"
    }

    fn priority(&self) -> i32 {
        2510
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::REWRITE
    }

    fn rewrite(&self, ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        let Some((token, source)) = self.token(ctx) else {
            return self
                .anonymous
                .or_refuse(ctx, &self.consumers, &self.missing);
        };
        let who = match self.verify(token) {
            Ok(who) => who,
            Err(why) => {
                let refusal = match why {
                    Refusal::Invalid => &self.invalid,
                    Refusal::NoKey => &self.no_key,
                    Refusal::Failed => &self.failed,
                };
                return self.anonymous.or_refuse(ctx, &self.consumers, refusal);
            }
        };
        super::auth::identify(ctx, who);
        if self.hide_credentials {
            self.hide(ctx, source);
        }
        Flow::Continue
    }
}
