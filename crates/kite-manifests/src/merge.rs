//! The patch that takes a live object from what a file said last time to what it says
//! now (a three-way JSON merge patch, as `kubectl apply` makes for kinds without a
//! strategic schema): every field the file sets, and `null` for each field the file set
//! last time and no longer does. Fields the file never set (defaults, what controllers
//! and users added) are left alone.

use serde_json::{Map, Value};

/// The merge patch from `last` (the file's previous object, if any) to `desired`.
pub fn patch(last: Option<&Value>, desired: &Value) -> Value {
    match (last, desired) {
        (Some(Value::Object(old)), Value::Object(new)) => Value::Object(objects(old, new)),
        _ => desired.clone(),
    }
}

fn objects(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in new {
        let p = match (old.get(k), v) {
            (Some(o @ Value::Object(_)), Value::Object(_)) => patch(Some(o), v),
            _ => v.clone(),
        };
        out.insert(k.clone(), p);
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.insert(k.clone(), Value::Null);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn removed_fields_become_null_and_set_ones_stay() {
        let last = json!({"data": {"a": "1", "b": "2"}, "metadata": {"labels": {"x": "y"}}});
        let desired = json!({"data": {"a": "3"}, "metadata": {}});
        assert_eq!(
            patch(Some(&last), &desired),
            json!({"data": {"a": "3", "b": null}, "metadata": {"labels": null}})
        );
    }

    #[test]
    fn without_a_last_version_the_patch_is_the_object() {
        let desired = json!({"spec": {"replicas": 2}});
        assert_eq!(patch(None, &desired), desired);
    }

    #[test]
    fn lists_are_replaced_whole() {
        let last = json!({"spec": {"ports": [{"port": 80}, {"port": 443}]}});
        let desired = json!({"spec": {"ports": [{"port": 80}]}});
        assert_eq!(patch(Some(&last), &desired), desired);
    }
}
