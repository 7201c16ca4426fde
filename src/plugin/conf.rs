//! Pieces of plugin configuration several plugins share: header edits with `$var` values,
//! and `vars` condition lists.

use super::HeaderEdits;
use crate::vars::{Condition, Template, VarSource};
use serde_json::Value;

/// A header name a plugin may write: a token, not one the gateway writes itself.
pub fn check_header_name(field: &str, name: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(format!("{field}: '{name}' is not a header name"));
    }
    Ok(())
}

/// A header value template: no CR, LF or NUL.
pub fn header_value(field: &str, v: &Value) -> Result<Template, String> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(format!("{field}: expected a string or a number")),
    };
    if text.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!(
            "{field}: a header value may not contain CR, LF or NUL"
        ));
    }
    Template::parse(&text).map_err(|e| format!("{field}: {e}"))
}

/// Header operations as configured, values still templates.
#[derive(Debug, Default)]
pub struct HeaderOps {
    set: Vec<(String, Template)>,
    add: Vec<(String, Template)>,
    remove: Vec<String>,
}

impl HeaderOps {
    /// Parses APISIX's `headers`: `{ "add": {..}, "set": {..}, "remove": [..] }`, or the
    /// older flat `{ "Name": "value" }` (which sets). `add_as_list`: `add` is a list of
    /// `"Name: value"` strings (response-rewrite) rather than an object (proxy-rewrite).
    pub fn parse(field: &str, v: &Value, add_as_list: bool) -> Result<HeaderOps, String> {
        let Value::Object(map) = v else {
            return Err(format!("{field}: expected an object"));
        };
        let structured = map
            .keys()
            .all(|k| matches!(k.as_str(), "add" | "set" | "remove"));
        let mut ops = HeaderOps::default();
        if !structured {
            for (name, value) in map {
                check_header_name(&format!("{field}.{name}"), name)?;
                ops.set.push((
                    name.clone(),
                    header_value(&format!("{field}.{name}"), value)?,
                ));
            }
            return Ok(ops);
        }
        if let Some(set) = map.get("set") {
            let Value::Object(set) = set else {
                return Err(format!("{field}.set: expected an object"));
            };
            for (name, value) in set {
                let f = format!("{field}.set.{name}");
                check_header_name(&f, name)?;
                ops.set.push((name.clone(), header_value(&f, value)?));
            }
        }
        match (map.get("add"), add_as_list) {
            (None, _) => {}
            (Some(Value::Object(add)), false) => {
                for (name, value) in add {
                    let f = format!("{field}.add.{name}");
                    check_header_name(&f, name)?;
                    ops.add.push((name.clone(), header_value(&f, value)?));
                }
            }
            (Some(Value::Array(add)), true) => {
                for (i, item) in add.iter().enumerate() {
                    let f = format!("{field}.add[{i}]");
                    let Some((name, value)) = item.as_str().and_then(|s| s.split_once(':')) else {
                        return Err(format!("{f}: expected \"Name: value\""));
                    };
                    check_header_name(&f, name.trim())?;
                    ops.add.push((
                        name.trim().to_string(),
                        header_value(&f, &Value::String(value.trim().to_string()))?,
                    ));
                }
            }
            (Some(_), list) => {
                return Err(format!(
                    "{field}.add: expected {}",
                    if list { "an array" } else { "an object" }
                ))
            }
        }
        if let Some(remove) = map.get("remove") {
            let Value::Array(remove) = remove else {
                return Err(format!("{field}.remove: expected an array"));
            };
            for (i, name) in remove.iter().enumerate() {
                let f = format!("{field}.remove[{i}]");
                let name = name.as_str().ok_or(format!("{f}: expected a string"))?;
                check_header_name(&f, name)?;
                ops.remove.push(name.to_string());
            }
        }
        Ok(ops)
    }

    /// Applies the operations to `edits`, rendering values with the request's variables.
    pub fn apply(&self, vars: &dyn VarSource, edits: &mut HeaderEdits) {
        for name in &self.remove {
            edits.remove(name);
        }
        for (name, value) in &self.set {
            edits.set_with(name, |out| value.render_str(vars, out));
        }
        for (name, value) in &self.add {
            edits.add_with(name, |out| value.render_str(vars, out));
        }
    }
}

/// `vars` as plugins take it: a list of condition lists; it holds when every condition of
/// one of the lists holds (an empty list of lists always holds).
#[derive(Debug, Default)]
pub struct AnyOf(Vec<Vec<Condition>>);

impl AnyOf {
    pub fn parse(field: &str, v: Option<&Value>, nested: bool) -> Result<AnyOf, String> {
        let Some(v) = v else {
            return Ok(AnyOf::default());
        };
        let Value::Array(lists) = v else {
            return Err(format!("{field}: expected an array"));
        };
        let mut out = Vec::new();
        if nested {
            for (i, list) in lists.iter().enumerate() {
                let Value::Array(conds) = list else {
                    return Err(format!("{field}[{i}]: expected an array of conditions"));
                };
                out.push(conditions(&format!("{field}[{i}]"), conds)?);
            }
        } else {
            out.push(conditions(field, lists)?);
        }
        Ok(AnyOf(out))
    }

    pub fn holds(&self, vars: &dyn VarSource) -> bool {
        self.0.is_empty() || self.0.iter().any(|c| c.iter().all(|c| c.matches(vars)))
    }
}

fn conditions(field: &str, items: &[Value]) -> Result<Vec<Condition>, String> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Array(parts) = item else {
                return Err(format!("{field}[{i}]: expected [var, op, value]"));
            };
            Condition::compile(parts)
                .map_err(|e| format!("{field}[{i}]: failed to validate the 'vars' expression: {e}"))
        })
        .collect()
}

/// ngx.re.sub's replacement (`$0`, `$1`, `${1}`, `$$`) in the regex crate's syntax, where
/// `$1a` would name a group `1a`: numbered groups are braced, any other `$` is literal.
pub(super) fn ngx_replacement(ngx: &str) -> String {
    let mut out = String::with_capacity(ngx.len() + 4);
    let mut chars = ngx.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek().map(|&(_, c)| c) {
            Some('$') => {
                chars.next();
                out.push_str("$$");
            }
            Some('{') => out.push('$'),
            Some(d) if d.is_ascii_digit() => {
                out.push_str("${");
                while let Some(&(_, d)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
                    out.push(d);
                    chars.next();
                }
                out.push('}');
            }
            _ => out.push_str("$$"),
        }
    }
    out
}
