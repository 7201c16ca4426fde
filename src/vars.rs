//! Route `vars` conditions: APISIX's lua-resty-expr DSL, `[var, op, value]` or
//! `[var, "!", op, value]`, all conditions of a route ANDed.
//!
//! Conditions are compiled once per config (regexes included); evaluating one reads a request
//! variable as a byte slice and compares, without allocating.

use regex::bytes::Regex;
use serde_json::Value;

/// A request variable, named as in nginx/APISIX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    Uri,
    RequestUri,
    QueryString,
    Host,
    RemoteAddr,
    RequestMethod,
    Scheme,
    ServerPort,
    /// `arg_NAME`: query argument.
    Arg(String),
    /// `http_NAME`: request header, NAME lower-case with `-` written as `_`.
    Http(String),
    /// `cookie_NAME`.
    Cookie(String),
    /// `consumer_name`: the consumer an authentication plugin identified.
    ConsumerName,
    /// `consumer_group_id`: that consumer's group, when it has one.
    ConsumerGroupId,
    /// `route_id`, `service_id`: the matched route's id and its service's (APISIX's ctx vars).
    RouteId,
    ServiceId,
    /// `ssl_server_name`: the name a TLS client asked for (SNI).
    SslServerName,
    /// `ssl_client_s_dn`: the subject of a TLS client's certificate (RFC 2253).
    SslClientSDn,
    /// The response status (response phases only; nothing before a response exists).
    Status,
    /// `pid`: the serving process's id (nginx's `$pid`), which tells generations apart
    /// across a binary upgrade.
    Pid,
    /// `upstream_http_NAME`: a header of the response as it came (response phases only).
    UpstreamHttp(String),
}

impl Var {
    pub fn parse(name: &str) -> Result<Var, String> {
        Ok(match name {
            "uri" => Var::Uri,
            "request_uri" => Var::RequestUri,
            "query_string" | "args" => Var::QueryString,
            "host" => Var::Host,
            "remote_addr" => Var::RemoteAddr,
            "request_method" => Var::RequestMethod,
            "scheme" => Var::Scheme,
            "server_port" => Var::ServerPort,
            "status" => Var::Status,
            "pid" => Var::Pid,
            "consumer_name" => Var::ConsumerName,
            "consumer_group_id" => Var::ConsumerGroupId,
            "route_id" => Var::RouteId,
            "service_id" => Var::ServiceId,
            "ssl_server_name" => Var::SslServerName,
            "ssl_client_s_dn" => Var::SslClientSDn,
            _ => {
                if let Some(h) = name.strip_prefix("upstream_http_") {
                    Var::UpstreamHttp(h.to_ascii_lowercase())
                } else if let Some(a) = name.strip_prefix("arg_") {
                    Var::Arg(a.to_string())
                } else if let Some(h) = name.strip_prefix("http_") {
                    Var::Http(h.to_ascii_lowercase())
                } else if let Some(c) = name.strip_prefix("cookie_") {
                    Var::Cookie(c.to_string())
                } else {
                    return Err(format!("unknown variable '{name}'"));
                }
            }
        })
    }
}

/// This process's id as text (`$pid`).
pub fn pid_text() -> &'static [u8] {
    static PID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PID.get_or_init(|| std::process::id().to_string())
        .as_bytes()
}

/// Where condition evaluation reads variables from (implemented by the connection).
pub trait VarSource {
    fn var(&self, var: &Var) -> Option<&[u8]>;
}

/// Text with variables in it (`$host$uri`, `/api/${arg_v}/x`): chash keys, plugin values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplatePart {
    Literal(String),
    Var(Var),
}

impl Template {
    /// Parses `$var` and `${var}` among literal text (`$` followed by anything else is an
    /// error, so a typo is caught when the config loads).
    pub fn parse(t: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(pos) = rest.find('$') {
            if pos > 0 {
                parts.push(TemplatePart::Literal(rest[..pos].to_string()));
            }
            let after = &rest[pos + 1..];
            let (name, next) = if let Some(inner) = after.strip_prefix('{') {
                let end = inner.find('}').ok_or("unclosed '${'")?;
                (&inner[..end], &inner[end + 1..])
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            };
            if name.is_empty() {
                return Err("'$' must be followed by a variable name".into());
            }
            parts.push(TemplatePart::Var(Var::parse(name)?));
            rest = next;
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// Whether any part is a variable (a template without one is constant text).
    pub fn has_vars(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, TemplatePart::Var(_)))
    }

    /// Appends the text with each variable's value (missing ones as empty) to `out`.
    /// Returns whether any variable had a value.
    pub fn render(&self, vars: &dyn VarSource, out: &mut Vec<u8>) -> bool {
        self.for_each_piece(vars, |piece| out.extend_from_slice(piece))
    }

    /// Hands the rendered text to `piece` in pieces (a hasher, a buffer), without building
    /// it. Returns whether any variable had a value.
    pub fn for_each_piece(&self, vars: &dyn VarSource, mut piece: impl FnMut(&[u8])) -> bool {
        let mut any = false;
        for part in &self.parts {
            match part {
                TemplatePart::Literal(s) => piece(s.as_bytes()),
                TemplatePart::Var(v) => {
                    if let Some(value) = vars.var(v) {
                        piece(value);
                        any = true;
                    }
                }
            }
        }
        any
    }

    /// The rendered text as a string (lossy for non-UTF-8 values).
    pub fn render_string(&self, vars: &dyn VarSource) -> String {
        let mut out = String::new();
        self.render_str(vars, &mut out);
        out
    }

    /// Appends the rendered text to a string (lossy for non-UTF-8 values).
    pub fn render_str(&self, vars: &dyn VarSource, out: &mut String) {
        for part in &self.parts {
            match part {
                TemplatePart::Literal(s) => out.push_str(s),
                TemplatePart::Var(v) => {
                    if let Some(value) = vars.var(v) {
                        match std::str::from_utf8(value) {
                            Ok(s) => out.push_str(s),
                            Err(_) => out.push_str(&String::from_utf8_lossy(value)),
                        }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Eq(Vec<u8>),
    Ne(Vec<u8>),
    Gt(f64),
    Lt(f64),
    Ge(f64),
    Le(f64),
    Regex(Regex),
    In(Vec<Vec<u8>>),
    Has(Vec<u8>),
}

/// One compiled `[var, op, value]` condition.
#[derive(Debug, Clone)]
pub struct Condition {
    var: Var,
    negate: bool,
    op: Op,
}

fn value_string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err("value must be a string or a number".into()),
    }
}

fn value_number(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| "bad number".to_string()),
        Value::String(s) => s.parse().map_err(|_| format!("'{s}' is not a number")),
        _ => Err("value must be a number".into()),
    }
}

impl Condition {
    /// Compiles one condition; the error says what is wrong with it.
    pub fn compile(items: &[Value]) -> Result<Condition, String> {
        let (var, negate, op, value) = match items {
            [Value::String(var), Value::String(bang), Value::String(op), value] if bang == "!" => {
                (var, true, op.as_str(), value)
            }
            [Value::String(var), Value::String(op), value] => (var, false, op.as_str(), value),
            _ => {
                return Err(
                    "expected [variable, operator, value] or [variable, \"!\", operator, value]"
                        .into(),
                )
            }
        };
        let var = Var::parse(var)?;
        let op = match op {
            "==" => Op::Eq(value_string(value)?.into_bytes()),
            "~=" => Op::Ne(value_string(value)?.into_bytes()),
            ">" => Op::Gt(value_number(value)?),
            "<" => Op::Lt(value_number(value)?),
            ">=" => Op::Ge(value_number(value)?),
            "<=" => Op::Le(value_number(value)?),
            "~~" | "~*" => {
                let mut pattern = value_string(value)?;
                if op == "~*" {
                    pattern = format!("(?i){pattern}");
                }
                Op::Regex(Regex::new(&pattern).map_err(|e| format!("invalid regex: {e}"))?)
            }
            "in" => match value {
                Value::Array(items) => Op::In(
                    items
                        .iter()
                        .map(|v| value_string(v).map(String::into_bytes))
                        .collect::<Result<_, _>>()?,
                ),
                _ => return Err("operator 'in' needs an array value".into()),
            },
            "has" => Op::Has(value_string(value)?.into_bytes()),
            other => return Err(format!("invalid operator '{other}'")),
        };
        Ok(Condition { var, negate, op })
    }

    pub fn matches(&self, src: &dyn VarSource) -> bool {
        let v = src.var(&self.var);
        let result = match (&self.op, v) {
            (Op::Ne(_), None) => true,
            (_, None) => false,
            (Op::Eq(want), Some(v)) => v == want.as_slice(),
            (Op::Ne(want), Some(v)) => v != want.as_slice(),
            (Op::Gt(n), Some(v)) => as_number(v).is_some_and(|x| x > *n),
            (Op::Lt(n), Some(v)) => as_number(v).is_some_and(|x| x < *n),
            (Op::Ge(n), Some(v)) => as_number(v).is_some_and(|x| x >= *n),
            (Op::Le(n), Some(v)) => as_number(v).is_some_and(|x| x <= *n),
            (Op::Regex(re), Some(v)) => re.is_match(v),
            (Op::In(set), Some(v)) => set.iter().any(|s| s.as_slice() == v),
            (Op::Has(item), Some(v)) => v
                .split(|&b| b == b',')
                .any(|t| crate::http::trim(t) == item.as_slice()),
        };
        result != self.negate
    }
}

fn as_number(v: &[u8]) -> Option<f64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Src;
    impl VarSource for Src {
        fn var(&self, var: &Var) -> Option<&[u8]> {
            match var {
                Var::Http(h) if h == "x_env" => Some(b"canary"),
                Var::Arg(a) if a == "age" => Some(b"20"),
                _ => None,
            }
        }
    }

    fn cond(v: serde_json::Value) -> Condition {
        Condition::compile(v.as_array().unwrap()).unwrap()
    }

    #[test]
    fn operators() {
        assert!(cond(json!(["http_x_env", "==", "canary"])).matches(&Src));
        assert!(!cond(json!(["http_x_env", "~=", "canary"])).matches(&Src));
        assert!(cond(json!(["arg_age", ">", 18])).matches(&Src));
        assert!(!cond(json!(["arg_age", "!", ">", 18])).matches(&Src));
        assert!(cond(json!(["http_x_env", "~~", "^can"])).matches(&Src));
        assert!(cond(json!(["http_x_env", "in", ["a", "canary"]])).matches(&Src));
        assert!(!cond(json!(["http_missing", "==", "x"])).matches(&Src));
        assert!(cond(json!(["http_missing", "~=", "x"])).matches(&Src));
        assert!(Condition::compile(json!(["uri", "=", "x"]).as_array().unwrap()).is_err());
    }
}
