//! Field errors and the naming rules upstream validation uses (RFC 1123 names, qualified
//! names, label values), with upstream's wording so kubectl users see familiar messages.

use serde_json::Value;

/// One failed check on one field, as a metav1 StatusCause.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// e.g. `FieldValueRequired`, `FieldValueInvalid`.
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>) -> Self {
        FieldError {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }
    /// As upstream's `field.Required(path, detail)` with a detail.
    pub fn required_because(field: impl Into<String>, detail: &str) -> Self {
        FieldError {
            message: format!("Required value: {detail}"),
            ..Self::required(field)
        }
    }
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            v => v.to_string(),
        };
        FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {shown}: {detail}"),
        }
    }
    pub fn not_supported(field: impl Into<String>, value: &Value, allowed: &[&str]) -> Self {
        let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        FieldError {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                list.join(", ")
            ),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        FieldError {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {value}"),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }
    /// The `field: message` form upstream joins into the Status message.
    pub fn text(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// The characters of an RFC 1123 label (its length is each caller's rule: a subdomain's
/// parts may be longer than 63, as upstream's regex allows).
fn is_label_chars(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks an RFC 1123 label (namespaces, service names); None if valid.
pub fn dns1123_label(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    (!is_label_chars(s)).then(|| DNS1123_LABEL_MSG.to_string())
}

/// Checks an RFC 1123 subdomain (most object names); None if valid.
pub fn dns1123_subdomain(s: &str) -> Option<String> {
    if s.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    (s.is_empty() || !s.split('.').all(is_label_chars)).then(|| DNS1123_SUBDOMAIN_MSG.to_string())
}

/// Checks an RFC 1035 label (service names); None if valid.
pub fn dns1035_label(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    (!is_label_chars(s) || !s.starts_with(|c: char| c.is_ascii_lowercase()))
        .then(|| DNS1035_LABEL_MSG.to_string())
}

/// Checks a qualified name (label and annotation keys): `[prefix/]name`; None if valid.
pub fn qualified_name(s: &str) -> Option<String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Some("prefix part must be non-empty".into());
        }
        if let Some(e) = dns1123_subdomain(p) {
            return Some(format!("prefix part {e}"));
        }
    }
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    (!ok).then(|| "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".to_string())
}

/// Checks a label value; None if valid.
pub fn label_value(s: &str) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    let ok = s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    (!ok).then(|| "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_string())
}

/// Checks `metadata.labels` and `metadata.annotations` at `path` (e.g. `metadata`).
pub fn labels_and_annotations(meta: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(e) = qualified_name(k) {
                errs.push(FieldError::invalid(
                    format!("{path}.labels"),
                    &Value::String(k.clone()),
                    &e,
                ));
            }
            match v.as_str() {
                Some(s) => {
                    if let Some(e) = label_value(s) {
                        errs.push(FieldError::invalid(format!("{path}.labels"), v, &e));
                    }
                }
                None => errs.push(FieldError::invalid(
                    format!("{path}.labels"),
                    v,
                    "must be a string",
                )),
            }
        }
    }
    if let Some(ann) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in ann {
            total += k.len() + v.as_str().map_or(0, str::len);
            if let Some(e) = qualified_name(&k.to_lowercase()) {
                errs.push(FieldError::invalid(
                    format!("{path}.annotations"),
                    &Value::String(k.clone()),
                    &e,
                ));
            }
        }
        if total > 256 * 1024 {
            errs.push(FieldError {
                reason: "FieldValueTooLong",
                field: format!("{path}.annotations"),
                message: "Too long: must have at most 262144 bytes".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns1123_subdomain("web.example-1").is_none());
        // A subdomain's parts may be longer than a label (the conformance suite's pod names).
        let long = format!("termination-message-container{}", "a".repeat(36));
        assert!(dns1123_subdomain(&long).is_none());
        assert!(dns1123_label(&long).is_some());
        assert!(dns1123_subdomain("Web").is_some());
        assert!(dns1123_subdomain("a_b").is_some());
        assert!(dns1123_label("a.b").is_some());
        assert!(dns1035_label("1abc").is_some());
        assert!(qualified_name("app.kubernetes.io/name").is_none());
        assert!(qualified_name("/x").is_some());
        assert!(qualified_name("bad key").is_some());
        assert!(label_value("").is_none());
        assert!(label_value("-x").is_some());
    }
}
