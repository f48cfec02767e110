//! Decoding a JSON value into a typed API object while noting the fields the type does not
//! have (what upstream's strict decoding reports), without copying the input: a thin
//! `Deserializer` over `&Value` that gives each nested value its path and records that
//! path whenever the typed visitor skips a value. Paths are built only for those.

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::{Error, Value};
use std::cell::RefCell;
use std::fmt::Write;

/// Where a value sits in the document, as upstream prints it: `spec.containers[0].name`.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn render(&self, out: &mut String) {
        match *self {
            Path::Root => {}
            Path::Key(parent, key) => {
                parent.render(out);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Path::Index(parent, i) => {
                parent.render(out);
                let _ = write!(out, "[{i}]");
            }
        }
    }
}

/// Decodes `v` as `T`; the paths of fields `T` does not have (other than nulls, which
/// clients send for fields they leave unset) are appended to `unknown`.
pub fn decode_noting_unknown<T: de::DeserializeOwned>(
    v: &Value,
    unknown: &mut Vec<String>,
) -> Result<T, Error> {
    let cell = RefCell::new(std::mem::take(unknown));
    let out = T::deserialize(Tracked {
        v,
        path: Path::Root,
        unknown: &cell,
    });
    *unknown = cell.into_inner();
    out
}

/// Decodes `v` as `T` with the same checks as [`decode_noting_unknown`], and on failure
/// names the field that failed.
pub fn decode_with_path<T: de::DeserializeOwned>(
    v: &Value,
) -> Result<T, serde_path_to_error::Error<Error>> {
    let cell = RefCell::new(Vec::new());
    serde_path_to_error::deserialize(Tracked {
        v,
        path: Path::Root,
        unknown: &cell,
    })
}

/// Upstream's `ParseQuantity` errors, word for word.
const QUANTITY_FORMAT: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
const QUANTITY_SUFFIX: &str = "unable to parse quantity's suffix";
const QUANTITY_NUMERIC: &str = "unable to parse numeric part of quantity";

/// Whether `s` parses as a resource quantity, as upstream's `resource.ParseQuantity`
/// decides (after trimming spaces, as its JSON decoding does): a signed decimal number,
/// then a suffix that is binary (`Ki` … `Ei`), decimal (`n`, `u`, `m`, ``, `k` … `E`) or
/// an exponent (`e3`, `E-2`).
pub fn check_quantity(s: &str) -> Result<(), &'static str> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(QUANTITY_FORMAT);
    }
    let mut i = usize::from(matches!(b[0], b'+' | b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let mut number_digits = digits(&mut i);
    if i < b.len() && b[i] == b'.' {
        i += 1;
        number_digits += digits(&mut i);
    }
    let suffix_start = i;
    while i < b.len() && b"eEinumkKMGTP".contains(&b[i]) {
        i += 1;
    }
    if i < b.len() && matches!(b[i], b'+' | b'-') {
        i += 1;
    }
    digits(&mut i);
    if i < b.len() {
        return Err(QUANTITY_FORMAT);
    }
    let suffix = &s[suffix_start..];
    let known = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || (suffix.len() > 1
        && suffix.starts_with(['e', 'E'])
        && suffix[1..].parse::<i32>().is_ok());
    if !known {
        return Err(QUANTITY_SUFFIX);
    }
    if number_digits == 0 {
        return Err(QUANTITY_NUMERIC);
    }
    Ok(())
}

struct Tracked<'a, 'de> {
    v: &'de Value,
    path: Path<'a>,
    unknown: &'a RefCell<Vec<String>>,
}

impl<'a, 'de> Tracked<'a, 'de> {
    fn map<V: Visitor<'de>>(
        &self,
        m: &'de serde_json::Map<String, Value>,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_map(TrackedMap {
            iter: m.iter(),
            pending: None,
            path: self.path,
            unknown: self.unknown,
        })
    }

    fn seq<V: Visitor<'de>>(&self, a: &'de [Value], visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(TrackedSeq {
            iter: a.iter().enumerate(),
            path: self.path,
            unknown: self.unknown,
        })
    }
}

impl<'a, 'de> Deserializer<'de> for Tracked<'a, 'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.v {
            Value::Object(m) => self.map(m, visitor),
            Value::Array(a) => self.seq(a, visitor),
            v => v.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.v {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if !self.v.is_null() {
            let mut p = String::new();
            self.path.render(&mut p);
            self.unknown.borrow_mut().push(p);
        }
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        // k8s-openapi's Quantity takes any string; upstream's decoding parses it.
        if name == "Quantity" {
            let checked = match self.v {
                Value::String(s) => check_quantity(s),
                Value::Number(n) => check_quantity(&n.to_string()),
                _ => Ok(()),
            };
            checked.map_err(de::Error::custom)?;
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.v {
            Value::Object(m) => self.map(m, visitor),
            // The value's own errors ("invalid type: string, expected …").
            v => v.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.v {
            Value::Object(m) => self.map(m, visitor),
            v => v.deserialize_map(visitor),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.v {
            Value::Array(a) => self.seq(a, visitor),
            v => v.deserialize_seq(visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // API types have no enums with fields to check; the value decodes them as usual.
        self.v.deserialize_enum(name, variants, visitor)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct tuple tuple_struct identifier
    }
}

struct TrackedMap<'a, 'de> {
    iter: serde_json::map::Iter<'de>,
    pending: Option<(&'de str, &'de Value)>,
    path: Path<'a>,
    unknown: &'a RefCell<Vec<String>>,
}

impl<'a, 'de> MapAccess<'de> for TrackedMap<'a, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.pending = Some((k.as_str(), v));
                seed.deserialize(BorrowedStrDeserializer::new(k.as_str()))
                    .map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let (k, v) = self
            .pending
            .take()
            .ok_or_else(|| de::Error::custom("a map value was asked for before its key"))?;
        seed.deserialize(Tracked {
            v,
            path: Path::Key(&self.path, k),
            unknown: self.unknown,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct TrackedSeq<'a, 'de> {
    iter: std::iter::Enumerate<std::slice::Iter<'de, Value>>,
    path: Path<'a>,
    unknown: &'a RefCell<Vec<String>>,
}

impl<'a, 'de> SeqAccess<'de> for TrackedSeq<'a, 'de> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        match self.iter.next() {
            Some((i, v)) => seed
                .deserialize(Tracked {
                    v,
                    path: Path::Index(&self.path, i),
                    unknown: self.unknown,
                })
                .map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    #[test]
    fn notes_unknown_fields_with_their_paths() {
        let v = json!({
            "metadata": {"name": "p", "bogus": 1, "labels": {"a": "b"}, "creationTimestamp": null},
            "spec": {"containers": [
                {"name": "a", "image": "i"},
                {"name": "b", "image": "i", "extra": {"x": 1}, "nothing": null}
            ]},
            "top": "x"
        });
        let mut unknown = Vec::new();
        let p: Pod = decode_noting_unknown(&v, &mut unknown).unwrap();
        assert_eq!(
            unknown,
            vec!["metadata.bogus", "spec.containers[1].extra", "top"]
        );
        // The typed object is what a plain decode gives.
        let plain: Pod = serde_json::from_value(v).unwrap();
        assert_eq!(p, plain);
    }

    #[test]
    fn quantities_parse_as_upstream_parses_them() {
        for ok in [
            "0",
            "1",
            "100m",
            "1.5Gi",
            "+1",
            "-1",
            ".5",
            "5.",
            "1e3",
            "1E-2",
            "2e+3",
            "10n",
            "3u",
            "128974848",
            " 64Mi ",
            "1k",
            "1Ei",
        ] {
            assert_eq!(check_quantity(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", QUANTITY_FORMAT),
            ("lots", QUANTITY_FORMAT),
            ("1.2.3", QUANTITY_FORMAT),
            ("1 Gi", QUANTITY_FORMAT),
            ("1Q", QUANTITY_FORMAT),
            ("1mm", QUANTITY_SUFFIX),
            ("1Ki2", QUANTITY_SUFFIX),
            ("1e", QUANTITY_SUFFIX),
            ("1K", QUANTITY_SUFFIX),
            ("Mi", QUANTITY_NUMERIC),
            (".", QUANTITY_NUMERIC),
        ] {
            assert_eq!(check_quantity(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn a_bad_quantity_fails_the_decode_at_its_field() {
        let v = json!({"spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"limits": {"cpu": 1.5, "memory": "lots"}}}]}});
        let mut unknown = Vec::new();
        assert!(decode_noting_unknown::<Pod>(&v, &mut unknown).is_err());
        let e = decode_with_path::<Pod>(&v).unwrap_err();
        assert_eq!(
            e.path().to_string(),
            "spec.containers[0].resources.limits.memory"
        );
        assert_eq!(e.inner().to_string(), QUANTITY_FORMAT);
        let good = json!({"spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"limits": {"cpu": 1.5, "memory": "64Mi"}}}]}});
        assert!(decode_noting_unknown::<Pod>(&good, &mut unknown).is_ok());
    }

    #[test]
    fn errors_match_a_plain_decode() {
        for v in [
            json!({"spec": {"containers": [{"name": 5}]}}),
            json!({"spec": {"containers": "x"}}),
            json!({"metadata": {"labels": {"a": 1}}}),
            json!("pod"),
        ] {
            let mut unknown = Vec::new();
            let tracked = decode_noting_unknown::<Pod>(&v, &mut unknown).unwrap_err();
            let plain = serde_json::from_value::<Pod>(v).unwrap_err();
            assert_eq!(tracked.to_string(), plain.to_string());
        }
    }
}
