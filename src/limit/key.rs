//! What a request counts as: APISIX's `key_type` and `key`.
//!
//! - `var` (default): the value of one variable (`remote_addr`, `http_x_api_key`,
//!   `consumer_name`, ...);
//! - `var_combination`: text with variables in it (`"$remote_addr $http_x_user"`);
//! - `constant`: the text as written (one counter for everyone).
//!
//! When the variable has no value (or no variable of a combination has one), the client
//! address counts instead, as in APISIX.

use crate::vars::{Template, Var, VarSource};
use std::hash::Hasher;

#[derive(Debug, Clone)]
pub enum LimitKey {
    Var(Var),
    Combination(Template),
    Constant(String),
}

impl LimitKey {
    /// Parses `key` for `key_type`; the error says what is wrong with the key.
    pub fn parse(key_type: &str, key: &str) -> Result<LimitKey, String> {
        match key_type {
            "var" => Var::parse(key.strip_prefix('$').unwrap_or(key))
                .map(LimitKey::Var)
                .map_err(|e| format!("key: {e}")),
            "var_combination" => Template::parse(key)
                .map(LimitKey::Combination)
                .map_err(|e| format!("key: {e}")),
            "constant" => Ok(LimitKey::Constant(key.to_string())),
            other => Err(format!("key_type: unknown \"{other}\"")),
        }
    }

    /// Hands the key's text to `piece`, in pieces.
    pub fn write(&self, vars: &dyn VarSource, mut piece: impl FnMut(&[u8])) {
        let resolved = match self {
            LimitKey::Var(v) => match vars.var(v) {
                Some(value) => {
                    piece(value);
                    true
                }
                None => false,
            },
            // Whether anything resolves is known only after rendering, and the pieces go to
            // a hasher that cannot take them back: look first, then render.
            LimitKey::Combination(t) => {
                t.for_each_piece(vars, |_| ()) && t.for_each_piece(vars, &mut piece)
            }
            LimitKey::Constant(c) => {
                piece(c.as_bytes());
                true
            }
        };
        if !resolved {
            piece(vars.var(&Var::RemoteAddr).unwrap_or(b""));
        }
    }

    /// The key's digest under `hasher` (a table's).
    pub fn digest(&self, vars: &dyn VarSource, mut hasher: impl Hasher) -> u64 {
        self.write(vars, |piece| hasher.write(piece));
        hasher.finish()
    }
}
