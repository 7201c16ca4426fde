//! Route `vars` conditions (`vars.rs`: APISIX's `[var, op, value]` DSL, regexes included) and
//! the `$var` templates plugins and hash keys use. Conditions come from config files and the
//! Admin API, so compiling any JSON or TOML must refuse or succeed without panicking, and a
//! compiled condition, evaluated against any request variables, must mean what its operator
//! says: the negated form (`"!"`) gives the opposite answer, `==`, `in`, `~~` and the numeric
//! comparisons agree with a direct reading of the variable.

use crate::vars::{Condition, Template, Var, VarSource};
use serde_json::Value;

/// Target `vars`: conditions as JSON (or a TOML value), a NUL byte, then the request's
/// variable values separated by NUL bytes.
pub fn vars(data: &[u8]) {
    let (text, values) = match memchr::memchr(0, data) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let src = Vars {
        values: values.split(|&b| b == 0).collect(),
    };
    let Some(v) = read(text) else {
        return;
    };
    let Value::Array(items) = &v else {
        return;
    };
    // A route's `vars` (a list of conditions), or one condition alone.
    check(items, &src);
    for item in items {
        if let Value::Array(parts) = item {
            check(parts, &src);
        }
    }
    templates(&v, &src);
}

/// The conditions as JSON, or as the TOML a config file would hold (`vars = ...`).
fn read(text: &[u8]) -> Option<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(text) {
        return Some(v);
    }
    let text = std::str::from_utf8(text).ok()?;
    let table: toml::Table = toml::from_str(&format!("vars = {text}")).ok()?;
    serde_json::to_value(table.get("vars")?).ok()
}

/// Request variables drawn from the input: each variable is one of the values, or missing.
struct Vars<'a> {
    values: Vec<&'a [u8]>,
}

impl VarSource for Vars<'_> {
    fn var(&self, var: &Var) -> Option<&[u8]> {
        let name = format!("{var:?}");
        let h = name
            .bytes()
            .fold(7usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        self.values.get(h % (self.values.len() + 1)).copied()
    }
}

fn check(items: &[Value], src: &Vars<'_>) {
    let cond = match Condition::compile(items) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.is_empty());
            return;
        }
    };
    let m = cond.matches(src);
    assert_eq!(cond.matches(src), m, "evaluation is not repeatable");
    let plain = match items {
        [v, _bang, op, value] => vec![v.clone(), op.clone(), value.clone()],
        [v, op, value] => vec![v.clone(), Value::from("!"), op.clone(), value.clone()],
        _ => unreachable!("a condition that compiled has 3 or 4 items: {items:?}"),
    };
    let opposite = Condition::compile(&plain).expect("the opposite form compiles too");
    assert_eq!(opposite.matches(src), !m, "'!' does not negate {items:?}");
    let (var, op, value) = match items {
        [v, _, op, value] | [v, op, value] => (v, op, value),
        _ => return,
    };
    let (Some(var), Some(op)) = (var.as_str(), op.as_str()) else {
        return;
    };
    let got = src.var(&Var::parse(var).expect("compiled, so the variable parses"));
    let positive = if items.len() == 4 { !m } else { m };
    let expected = match (op, value) {
        ("==", Value::String(s)) => got == Some(s.as_bytes()),
        ("~=", Value::String(s)) => got != Some(s.as_bytes()),
        ("in", Value::Array(set)) if set.iter().all(Value::is_string) => {
            got.is_some_and(|g| set.iter().any(|s| s.as_str().map(str::as_bytes) == Some(g)))
        }
        ("~~", Value::String(p)) => match regex::bytes::Regex::new(p) {
            Ok(re) => got.is_some_and(|g| re.is_match(g)),
            Err(_) => panic!("compiled a regex the regex crate refuses: {p:?}"),
        },
        (">" | "<" | ">=" | "<=", Value::Number(n)) => {
            let n = n.as_f64().expect("a JSON number is an f64");
            got.and_then(number).is_some_and(|x| match op {
                ">" => x > n,
                "<" => x < n,
                ">=" => x >= n,
                _ => x <= n,
            })
        }
        _ => return,
    };
    assert_eq!(positive, expected, "{items:?} against {got:?}");
}

fn number(v: &[u8]) -> Option<f64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// Every string in the input as a template: parsing never panics, and a template without
/// variables renders to its own text.
fn templates(v: &Value, src: &Vars<'_>) {
    match v {
        Value::String(s) => {
            if let Ok(t) = Template::parse(s) {
                let rendered = t.render_string(src);
                let mut bytes = Vec::new();
                let any = t.render(src, &mut bytes);
                if !t.has_vars() {
                    assert_eq!(&rendered, s);
                    assert!(!any);
                }
                // Values are bytes; the string form replaces invalid UTF-8 (value by value).
                if src.values.iter().all(|v| std::str::from_utf8(v).is_ok()) {
                    assert_eq!(String::from_utf8_lossy(&bytes), rendered);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| templates(i, src)),
        Value::Object(m) => m.values().for_each(|i| templates(i, src)),
        _ => {}
    }
}
