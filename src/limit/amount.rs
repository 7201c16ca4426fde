//! A limit's numbers as APISIX accepts them: an integer, or a variable resolved per request.

use crate::vars::{Template, VarSource};

/// A limit's number (`count`, `time_window`, `conn`, `burst`): a number, or a variable reference resolved per request
/// (`"$http_x_quota"`).
pub enum Amount {
    Fixed(u64),
    /// The variable text, and whether 0 is a valid value (a `burst`).
    Var(Template, bool),
}

impl Amount {
    /// Parses `value` (of `field`, for errors); `zero_ok`: 0 is a valid value.
    pub fn parse(value: &serde_json::Value, field: &str, zero_ok: bool) -> Result<Amount, String> {
        match value {
            serde_json::Value::Number(n) => n
                .as_u64()
                .filter(|&n| n > 0 || zero_ok)
                .map(Amount::Fixed)
                .ok_or_else(|| format!("{field}: must be a positive integer")),
            serde_json::Value::String(s) => Template::parse(s)
                .map(|t| Amount::Var(t, zero_ok))
                .map_err(|e| format!("{field}: {e}")),
            _ => Err(format!("{field}: must be an integer or a variable")),
        }
    }

    /// The value for this request; `None` when a variable does not give a valid integer.
    pub fn resolve(&self, vars: &dyn VarSource) -> Option<u64> {
        match self {
            Amount::Fixed(n) => Some(*n),
            Amount::Var(t, zero_ok) => {
                let mut n: u64 = 0;
                let mut digits = 0usize;
                let mut bad = false;
                t.for_each_piece(vars, |piece| {
                    for &b in piece {
                        match b {
                            b'0'..=b'9' if digits < 19 => {
                                n = n * 10 + (b - b'0') as u64;
                                digits += 1;
                            }
                            _ => bad = true,
                        }
                    }
                });
                (!bad && digits > 0 && (n > 0 || *zero_ok)).then_some(n)
            }
        }
    }
}
