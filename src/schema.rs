//! JSON Schema (draft 4 to 2020-12, the `jsonschema` crate) with APISIX's error messages:
//! `property "a" validation failed: failed to validate item 2: expected 0 to be at least 1`,
//! so a message an APISIX user knows, or a test of theirs matches, reads the same here.

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

/// A compiled schema.
pub struct Schema {
    validator: Validator,
    /// The schema as written, for messages that quote it (`anyOf` of `required` lists).
    source: Value,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

impl Schema {
    /// Compiles `schema`; an invalid schema is an error saying what is wrong with it.
    pub fn compile(schema: &Value) -> Result<Schema, String> {
        if !schema.is_object() && !schema.is_boolean() {
            return Err("a schema must be an object".into());
        }
        jsonschema::options()
            .should_validate_formats(true)
            .build(schema)
            .map(|validator| Schema {
                validator,
                source: schema.clone(),
            })
            .map_err(|e| format!("invalid JSON schema: {}", message(&e, None)))
    }

    /// Checks `value`; the error is the first failure, worded as APISIX words it.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        self.validator
            .validate(value)
            .map_err(|e| message(&e, Some(&self.source)))
    }
}

/// APISIX's message for an `anyOf` whose branches each require fields:
/// `object matches none of the required: ["a"] or ["b"]`.
fn none_of_required(e: &ValidationError<'_>, schema: &Value) -> Option<String> {
    let branches = schema.pointer(e.schema_path().as_str())?.as_array()?;
    let lists: Vec<String> = branches
        .iter()
        .map(|b| b.get("required").map(|r| r.to_string()))
        .collect::<Option<_>>()?;
    Some(format!(
        "object matches none of the required: {}",
        lists.join(" or ")
    ))
}

/// The failure in APISIX's words, prefixed by where in the value it is.
fn message(e: &ValidationError<'_>, schema: Option<&Value>) -> String {
    let mut out = String::new();
    for segment in e.instance_path().iter() {
        match segment {
            LocationSegment::Property(p) => {
                out.push_str(&format!("property {p:?} validation failed: "));
            }
            LocationSegment::Index(i) => {
                out.push_str(&format!("failed to validate item {}: ", i + 1));
            }
        }
    }
    // A failed `dependencies` branch says which property's it is, as APISIX's does.
    let path = e.schema_path().as_str();
    if let Some(rest) = path
        .split_once("/dependencies/")
        .or_else(|| path.split_once("/dependentSchemas/"))
        .map(|(_, rest)| rest)
    {
        let property = rest.split('/').next().unwrap_or(rest);
        out.push_str(&format!(
            "failed to validate dependent schema for {property:?}: "
        ));
    }
    let required = match (e.kind(), schema) {
        (ValidationErrorKind::AnyOf { .. }, Some(schema)) => none_of_required(e, schema),
        _ => None,
    };
    match required {
        Some(m) => out.push_str(&m),
        None => out.push_str(&kind_message(e.kind(), e.instance())),
    }
    out
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn kind_message(kind: &ValidationErrorKind, instance: &Value) -> String {
    use ValidationErrorKind as K;
    match kind {
        K::Required { property } => match property {
            Value::String(p) => format!("property {p:?} is required"),
            other => format!("property {other} is required"),
        },
        K::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(ts) => {
                    let names: Vec<String> = ts.iter().map(|t| t.to_string()).collect();
                    return format!(
                        "wrong type: expected one of {}, got {}",
                        names.join(", "),
                        type_name(instance)
                    );
                }
            };
            format!(
                "wrong type: expected {expected}, got {}",
                type_name(instance)
            )
        }
        K::Enum { .. } => "matches none of the enum values".into(),
        K::Minimum { limit } => format!("expected {instance} to be at least {limit}"),
        K::Maximum { limit } => format!("expected {instance} to be at most {limit}"),
        K::ExclusiveMinimum { limit } => format!("expected {instance} to be greater than {limit}"),
        K::ExclusiveMaximum { limit } => format!("expected {instance} to be smaller than {limit}"),
        K::MultipleOf { .. } => format!("expected {instance} to be a multiple of the given value"),
        K::MinLength { limit } => format!(
            "string too short, expected at least {limit}, got {}",
            instance.as_str().map_or(0, |s| s.chars().count())
        ),
        K::MaxLength { limit } => format!(
            "string too long, expected at most {limit}, got {}",
            instance.as_str().map_or(0, |s| s.chars().count())
        ),
        K::Pattern { pattern } => format!(
            "failed to match pattern {pattern:?} with {:?}",
            instance.as_str().unwrap_or_default()
        ),
        K::MinItems { limit } => format!("expect array to have at least {limit} items"),
        K::MaxItems { limit } => format!("expect array to have at most {limit} items"),
        K::MinProperties { limit } => format!("expect object to have at least {limit} properties"),
        K::MaxProperties { limit } => format!("expect object to have at most {limit} properties"),
        K::AdditionalProperties { unexpected } => format!(
            "additional properties forbidden, found {}",
            unexpected.join(", ")
        ),
        K::UniqueItems => "expected unique items".into(),
        K::AnyOf { .. } => "value should match at least one schema, but matches none".into(),
        K::OneOfNotValid { .. } => "value should match only one schema, but matches none".into(),
        K::OneOfMultipleValid { .. } => {
            "value should match only one schema, but matches several".into()
        }
        K::Not { .. } => "value wasn't supposed to match schema".into(),
        K::Constant { .. } => "failed to check const value".into(),
        K::Format { format } => format!("expect valid {format} format but got: {instance}"),
        K::FalseSchema => "expect false always".into(),
        // The crate's own wording for the rarer keywords.
        other => format!("{other:?}"),
    }
}
