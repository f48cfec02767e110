//! Decoding only the parts of a stored object that a selector reads: a watch with a label
//! or field selector (every kubelet's watch of its node's pods) tests each change of the
//! collection, and most of an object is never looked at. The rest is skipped while parsing
//! (no `Value` is built for it), which costs a fraction of decoding the whole object.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// The paths to keep (`metadata.labels`, `spec.nodeName`), as a tree; below a path's last
/// part the whole value is kept.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Paths {
    children: BTreeMap<String, Paths>,
    whole: bool,
}

impl Paths {
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a str>) -> Paths {
        let mut root = Paths::default();
        for p in paths {
            let mut at = &mut root;
            for part in p.split('.') {
                at = at.children.entry(part.to_string()).or_default();
            }
            at.whole = true;
            at.children.clear();
        }
        root
    }

    /// The object in `raw` with only these paths (the objects on the way to them, and
    /// whatever is at their ends); a path that is absent, or crosses a value that is not
    /// an object, is left out, as reading it from the whole object would find nothing.
    pub fn decode(&self, raw: &[u8]) -> serde_json::Result<Value> {
        let mut de = serde_json::Deserializer::from_slice(raw);
        let v = Seed(self).deserialize(&mut de)?;
        de.end()?;
        Ok(v)
    }
}

struct Seed<'p>(&'p Paths);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.0.whole {
            return serde::Deserialize::deserialize(d);
        }
        d.deserialize_any(self)
    }
}

/// A key, looked up among the wanted children without being copied.
struct Key<'p>(&'p BTreeMap<String, Paths>);

impl<'de, 'p> DeserializeSeed<'de> for Key<'p> {
    type Value = Option<(&'p String, &'p Paths)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'p> Visitor<'de> for Key<'p> {
    type Value = Option<(&'p String, &'p Paths)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: serde::de::Error>(self, k: &str) -> Result<Self::Value, E> {
        Ok(self.0.get_key_value(k))
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = m.next_key_seed(Key(&self.0.children))? {
            match k {
                Some((name, sub)) => {
                    let v = m.next_value_seed(Seed(sub))?;
                    if !v.is_null() || sub.whole {
                        out.insert(name.clone(), v);
                    }
                }
                None => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
    // Anything but an object on the way to a path holds nothing of it.
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Value, A::Error> {
        while s.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sparse(obj: &Value, paths: &[&str]) -> Value {
        Paths::new(paths.iter().copied())
            .decode(&serde_json::to_vec(obj).unwrap())
            .unwrap()
    }

    #[test]
    fn keeps_only_the_paths_asked_for() {
        let pod = json!({
            "kind": "Pod",
            "metadata": {"name": "p", "labels": {"app": "web", "x": "y"}, "annotations": {"a": "b"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1"}
        });
        assert_eq!(
            sparse(&pod, &["metadata.labels", "spec.nodeName", "status.phase"]),
            json!({
                "metadata": {"labels": {"app": "web", "x": "y"}},
                "spec": {"nodeName": "n1"},
                "status": {"phase": "Running"}
            })
        );
        assert_eq!(sparse(&pod, &[]), json!({}));
        // A path and one below it: the shorter one keeps the whole value.
        assert_eq!(
            sparse(&pod, &["metadata.labels.app", "metadata.labels"]),
            json!({"metadata": {"labels": {"app": "web", "x": "y"}}})
        );
    }

    #[test]
    fn what_is_missing_or_not_an_object_is_left_out() {
        let obj = json!({"spec": "text", "status": [1, {"phase": "x"}], "metadata": {"name": "n"}});
        assert_eq!(
            sparse(
                &obj,
                &[
                    "spec.nodeName",
                    "status.phase",
                    "metadata.labels",
                    "metadata.name"
                ]
            ),
            json!({"metadata": {"name": "n"}})
        );
        // An explicit null at a path's end stays, as the whole object has it.
        assert_eq!(
            sparse(&json!({"spec": {"nodeName": null}}), &["spec.nodeName"]),
            json!({"spec": {"nodeName": null}})
        );
    }

    #[test]
    fn escaped_keys_and_bad_input() {
        let raw = br#"{"spe\u0063": {"nodeName": "n1"}, "other": {"deep": [1, 2, {"a": "\"}"}]}}"#;
        assert_eq!(
            Paths::new(["spec.nodeName"]).decode(raw).unwrap(),
            json!({"spec": {"nodeName": "n1"}})
        );
        assert!(Paths::new(["spec"]).decode(b"{\"spec\": ").is_err());
        assert!(Paths::new(["spec"]).decode(b"{} trailing").is_err());
    }
}
