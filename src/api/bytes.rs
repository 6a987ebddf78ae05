//! How keys and values (arbitrary bytes) are written: as raw bytes in bincode (log entries, native
//! frames), and in JSON as a string when they are UTF-8, else as `{"base64": "..."}`, so answers
//! stay readable and any bytes survive. The two JSON forms cannot be confused: a string is always
//! the text itself, never base64.
//!
//! Use with `#[serde(with = "crate::api::bytes")]` on a `Vec<u8>`, [`list`] on a `Vec<Vec<u8>>`, or
//! [`option`] on an `Option<Vec<u8>>`. In bincode the bytes are written as the plain `Vec<u8>`
//! would be (a length, then the bytes), only in one copy instead of one call per byte.

use std::fmt;

use base64::Engine;
use serde::de;
use serde::ser::SerializeMap;
use serde::ser::SerializeSeq;
use serde::Deserializer;
use serde::Serializer;

/// The JSON field holding bytes that are not UTF-8.
pub const BASE64_FIELD: &str = "base64";

/// Writes `bytes` as text when it is UTF-8 (in a human-readable format), otherwise as base64.
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    if !serializer.is_human_readable() {
        return serializer.serialize_bytes(bytes);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => serializer.serialize_str(text),
        Err(_) => {
            let mut map = serializer.serialize_map(Some(1))?;
            map.serialize_entry(
                BASE64_FIELD,
                &base64::engine::general_purpose::STANDARD.encode(bytes),
            )?;
            map.end()
        }
    }
}

/// Reads what [`serialize`] wrote.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    if deserializer.is_human_readable() {
        deserializer.deserialize_any(BytesVisitor)
    } else {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

struct BytesVisitor;

impl<'de> de::Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a string, or {{\"{BASE64_FIELD}\": \"...\"}}")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<u8>, E> {
        Ok(text.as_bytes().to_vec())
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Vec<u8>, E> {
        Ok(text.into_bytes())
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
        Ok(bytes.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(bytes)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(byte) = seq.next_element()? {
            bytes.push(byte);
        }
        Ok(bytes)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Vec<u8>, A::Error> {
        let mut decoded = None;
        while let Some(field) = map.next_key::<String>()? {
            if field != BASE64_FIELD || decoded.is_some() {
                return Err(de::Error::unknown_field(&field, &[BASE64_FIELD]));
            }
            let text: String = map.next_value()?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| de::Error::custom(format!("invalid base64: {e}")))?;
            decoded = Some(bytes);
        }
        decoded.ok_or_else(|| de::Error::missing_field(BASE64_FIELD))
    }
}

/// Bytes inside another value (a list, an option), written as this module writes bytes.
struct Item<'a>(&'a [u8]);

impl serde::Serialize for Item<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(self.0, serializer)
    }
}

/// Bytes inside another value, read as this module reads bytes.
struct Owned(Vec<u8>);

impl<'de> serde::Deserialize<'de> for Owned {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize(deserializer).map(Owned)
    }
}

/// [`serialize`] and [`deserialize`] for a list of byte strings (a lease's keys).
pub mod list {
    use super::*;

    pub fn serialize<S: Serializer>(items: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(items.len()))?;
        for item in items {
            seq.serialize_element(&Item(item))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Vec<u8>>, D::Error> {
        let owned: Vec<Owned> = serde::Deserialize::deserialize(deserializer)?;
        Ok(owned.into_iter().map(|Owned(bytes)| bytes).collect())
    }
}

/// [`serialize`] and [`deserialize`] for bytes that may be absent (what a get found).
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&bytes.as_deref().map(Item), serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let owned: Option<Owned> = serde::Deserialize::deserialize(deserializer)?;
        Ok(owned.map(|Owned(bytes)| bytes))
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Holder {
        #[serde(with = "super")]
        bytes: Vec<u8>,
        #[serde(with = "super::list")]
        list: Vec<Vec<u8>>,
    }

    #[test]
    fn utf8_is_text_and_anything_else_is_base64_in_json() {
        let holder = Holder {
            bytes: b"caf\xc3\xa9".to_vec(),
            list: vec![vec![0xff, 0x00], b"a".to_vec()],
        };
        let json = serde_json::to_string(&holder).unwrap();
        assert_eq!(json, r#"{"bytes":"café","list":[{"base64":"/wA="},"a"]}"#);
        assert_eq!(serde_json::from_str::<Holder>(&json).unwrap(), holder);
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Maybe(#[serde(with = "super::option")] Option<Vec<u8>>);

    #[test]
    fn bincode_keeps_raw_bytes() {
        let holder = Holder {
            bytes: vec![0, 159, 146, 150],
            list: vec![vec![1, 2, 3]],
        };
        let encoded = bincode::serialize(&holder).unwrap();
        assert_eq!(bincode::deserialize::<Holder>(&encoded).unwrap(), holder);
        for maybe in [Maybe(None), Maybe(Some(vec![7, 0, 7]))] {
            let encoded = bincode::serialize(&maybe).unwrap();
            assert_eq!(bincode::deserialize::<Maybe>(&encoded).unwrap(), maybe);
        }
    }

    /// Peers and clients built before a field was marked as bytes still read it: bincode writes
    /// bytes exactly as a `Vec<u8>` of the same content.
    #[test]
    fn in_bincode_bytes_are_encoded_as_a_plain_vec() {
        let holder = Holder {
            bytes: vec![1, 2, 255],
            list: vec![vec![4], vec![]],
        };
        let plain = (vec![1u8, 2, 255], vec![vec![4u8], vec![]]);
        assert_eq!(
            bincode::serialize(&holder).unwrap(),
            bincode::serialize(&plain).unwrap()
        );
        let maybe = Maybe(Some(vec![9, 8]));
        assert_eq!(
            bincode::serialize(&maybe).unwrap(),
            bincode::serialize(&Some(vec![9u8, 8])).unwrap()
        );
    }

    #[test]
    fn malformed_base64_and_unknown_fields_are_refused() {
        for bad in [
            r#"{"bytes":{"base64":"***"},"list":[]}"#,
            r#"{"bytes":{"hex":"00"},"list":[]}"#,
            r#"{"bytes":{},"list":[]}"#,
        ] {
            assert!(serde_json::from_str::<Holder>(bad).is_err(), "{bad}");
        }
    }
}
