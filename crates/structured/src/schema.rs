//! JSON schemas as tokenfab hands them to llguidance: bounded whitespace, and OpenAI's strict
//! mode (no keys beyond `properties` unless the schema says otherwise).

use serde_json::{json, Value};

/// Whitespace allowed at each place JSON allows it: at most this many spaces/newlines, so a
/// model cannot fill `max_tokens` with blank lines inside an object (llguidance's default is
/// unbounded). 24 covers pretty-printing several levels deep.
pub(crate) const WHITESPACE: &str = r"[\x20\x0A\x0D\x09]{1,24}";

/// Adds tokenfab's defaults to a client's schema. A schema's own top-level `x-guidance` wins.
pub(crate) fn prepare_schema(mut schema: Value, strict: bool) -> Value {
    if strict {
        close_objects(&mut schema, 0);
    }
    if let Value::Object(map) = &mut schema {
        map.entry("x-guidance")
            .or_insert_with(|| json!({ "whitespace_pattern": WHITESPACE }));
    }
    schema
}

/// Keywords whose value is one subschema / an array of them / a map of them.
const ONE: &[&str] = &[
    "items",
    "additionalItems",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "additionalProperties",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
];
const ARRAY: &[&str] = &["prefixItems", "anyOf", "oneOf"];
const MAP: &[&str] = &[
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
];

/// Sets `additionalProperties: false` on every object schema with `properties` that does not
/// say, walking only subschema positions (never `const`, `enum` or `default` values). Members
/// of `allOf` are left open: closing each would forbid the keys of the others.
pub(crate) fn close_objects(s: &mut Value, depth: usize) {
    let Value::Object(map) = s else { return };
    if depth > 64 {
        return;
    }
    if map.contains_key("properties") && !map.contains_key("additionalProperties") {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    for (k, v) in map.iter_mut() {
        let k = k.as_str();
        if ONE.contains(&k) {
            close_objects(v, depth + 1);
        } else if ARRAY.contains(&k) {
            if let Value::Array(items) = v {
                items.iter_mut().for_each(|i| close_objects(i, depth + 1));
            }
        } else if MAP.contains(&k) {
            if let Value::Object(m) = v {
                m.values_mut().for_each(|i| close_objects(i, depth + 1));
            }
        } else if k == "allOf" {
            if let Value::Array(items) = v {
                for item in items {
                    // Inside a member, nested objects are still closed.
                    if let Value::Object(m) = item {
                        for (k2, v2) in m.iter_mut() {
                            if k2 != "additionalProperties" && MAP.contains(&k2.as_str()) {
                                if let Value::Object(props) = v2 {
                                    props.values_mut().for_each(|i| close_objects(i, depth + 2));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_closes_objects_but_not_values_or_allof_members() {
        let s = json!({
            "type": "object",
            "properties": {
                "a": {"type": "object", "properties": {"x": {"type": "integer"}}},
                "b": {"const": {"properties": {}}},
                "c": {"type": "array", "items": {"properties": {"y": {}}}},
                "d": {"allOf": [{"properties": {"p": {"properties": {"q": {}}}}}]},
                "e": {"type": "object", "properties": {}, "additionalProperties": true}
            },
            "$defs": {"D": {"properties": {"z": {}}}}
        });
        let out = prepare_schema(s, true);
        assert_eq!(out["additionalProperties"], false);
        assert_eq!(out["properties"]["a"]["additionalProperties"], false);
        assert_eq!(out["properties"]["b"]["const"], json!({"properties": {}}));
        assert_eq!(
            out["properties"]["c"]["items"]["additionalProperties"],
            false
        );
        let member = &out["properties"]["d"]["allOf"][0];
        assert!(member.get("additionalProperties").is_none());
        assert_eq!(
            member["properties"]["p"]["additionalProperties"], false,
            "nested objects inside an allOf member are closed"
        );
        assert_eq!(out["properties"]["e"]["additionalProperties"], true);
        assert_eq!(out["$defs"]["D"]["additionalProperties"], false);
        assert_eq!(out["x-guidance"]["whitespace_pattern"], WHITESPACE);
    }

    #[test]
    fn non_strict_leaves_the_schema_and_keeps_a_clients_x_guidance() {
        let s = json!({"type": "object", "properties": {"a": {}}, "x-guidance": {"whitespace_flexible": false}});
        let out = prepare_schema(s.clone(), false);
        assert_eq!(out, s);
        assert_eq!(prepare_schema(json!(true), true), json!(true));
    }
}
