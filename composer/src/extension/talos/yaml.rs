//! YAML helpers shared by the manifest rules and the service-spec rules: the first document as
//! Go's `yaml.Unmarshal` reads it, type names and scalars for messages, unknown-key warnings and
//! unrendered template placeholders.

use serde::Deserialize;
use serde_norway::Value;

use crate::extension::findings::Finding;

/// Parses the first YAML document of `text` (what Go's `yaml.Unmarshal` reads) and counts the
/// documents. An empty text or a bare `---` gives `Null`.
pub fn first_document(text: &str) -> Result<(Value, usize), serde_norway::Error> {
    use crate::profile::yaml_guard::{check, LIMITS};
    check(text, LIMITS)
        .map_err(|e| <serde_norway::Error as serde::de::Error>::custom(e.located()))?;
    let mut first = None;
    let mut count = 0;
    for doc in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(doc)?;
        count += 1;
        if first.is_none() {
            first = Some(value);
        }
    }
    Ok((first.unwrap_or(Value::Null), count))
}

/// A YAML value's type for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number (float)",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A scalar's text (`4.2`, `true`, `abc`), or its type name for collections.
pub fn scalar_or_type(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => type_name(other).to_string(),
    }
}

/// Adds a warning for every key of `map` outside `known`.
pub fn unknown_keys(
    map: &serde_norway::Mapping,
    known: &[&str],
    label: &str,
    prefix: &str,
    rule: &'static str,
    out: &mut Vec<Finding>,
) {
    for key in map.keys() {
        let name = scalar_or_type(key);
        if !known.contains(&name.as_str()) {
            out.push(Finding::warning(
                label,
                rule,
                format!("unknown key `{prefix}{name}`: Talos ignores it silently"),
                format!(
                    "remove it or fix its spelling (known: {})",
                    known.join(", ")
                ),
            ));
        }
    }
}

/// Unrendered template placeholders with their 1-based line: `{{ … }}` always, and with
/// `shell` also `$VERSION` and `${…}` (the sed-style placeholders of older manifests).
pub fn find_placeholders(text: &str, shell: bool) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            let tail = &rest[start..];
            let end = tail.find("}}").map(|e| e + 2).unwrap_or(tail.len());
            found.push((i + 1, tail[..end].to_string()));
            rest = &tail[end..];
        }
        if shell {
            shell_placeholders(line, i + 1, &mut found);
        }
    }
    found
}

fn shell_placeholders(line: &str, lineno: usize, found: &mut Vec<(usize, String)>) {
    let mut rest = line;
    while let Some(start) = rest.find('$') {
        let tail = &rest[start..];
        let token = if tail.starts_with("${") {
            let end = tail.find('}').map(|e| e + 1).unwrap_or(tail.len());
            Some(&tail[..end])
        } else if tail.starts_with("$VERSION") {
            Some("$VERSION")
        } else {
            None
        };
        let step = token.map(str::len).unwrap_or(1);
        if let Some(t) = token {
            found.push((lineno, t.to_string()));
        }
        rest = &tail[step..];
    }
}

/// One error finding listing every placeholder of a file.
pub fn placeholder_finding(
    label: &str,
    rule: &'static str,
    placeholders: &[(usize, String)],
) -> Finding {
    let list: Vec<String> = placeholders
        .iter()
        .map(|(line, p)| format!("`{p}` (line {line})"))
        .collect();
    Finding::error(
        label,
        rule,
        format!("unrendered template placeholders: {}", list.join(", ")),
        "render the template first (bldr/sed substitute VERSION, TIER, ...); Talos would \
         load the placeholder text verbatim",
    )
}
