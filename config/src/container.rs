//! Value types of the container providers' keys: sizes in bytes ("64MiB") and environment
//! variables written as a table or as a list of `NAME=value`.

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;

/// Parses a size: a whole number of bytes (`67108864`), or a number and a unit: `B`, `k`/`KB`
/// (1000), `KiB` (1024), `M`/`MB`, `MiB`, `G`/`GB`, `GiB`, `T`/`TB`, `TiB`. Docker's own
/// shorthand (`64m`, `1g`) means the binary units, as `docker run --memory` takes it.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("`{text}` does not start with a number; write a size such as \"64MiB\" or \"1GiB\"")
    })?;
    let scale: f64 = match unit.trim() {
        "" | "B" | "b" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "k" | "K" | "KiB" | "kib" => 1024.0,
        "m" | "M" | "MiB" | "mib" => 1024.0 * 1024.0,
        "g" | "G" | "GiB" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "T" | "TiB" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "`{text}` has unknown unit `{u}`; use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)"
            ))
        }
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes >= i64::MAX as f64 {
        return Err(format!("`{text}` is too large"));
    }
    if bytes.fract() != 0.0 {
        return Err(format!("`{text}` is not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

/// A size in bytes, read from config as "64MiB" (or a plain integer of bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, size) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)] {
            if b >= size && b.is_multiple_of(size) {
                return write!(f, "{}{unit}", b / size);
            }
        }
        if b >= 1024 && b.is_multiple_of(1024) {
            return write!(f, "{}KiB", b / 1024);
        }
        write!(f, "{b}B")
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"64MiB\" or a whole number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative; a size is at least 0")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_bytes(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Environment variables for a backend: `{ RUST_LOG = "info" }` or `["RUST_LOG=info"]` in
/// config, kept sorted by name.
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct EnvVars(pub BTreeMap<String, String>);

impl EnvVars {
    /// `NAME=value` strings, as Docker takes them.
    pub fn to_list(&self) -> Vec<String> {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> serde::Deserialize<'de> for EnvVars {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvVars;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of NAME = \"value\" or an array of \"NAME=value\" strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EnvVars, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    out.insert(k, v);
                }
                Ok(EnvVars(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EnvVars, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(item) = seq.next_element::<String>()? {
                    let Some((k, v)) = item.split_once('=') else {
                        return Err(de::Error::custom(format!(
                            "`{item}` is not NAME=value (e.g. \"RUST_LOG=info\")"
                        )));
                    };
                    out.insert(k.to_string(), v.to_string());
                }
                Ok(EnvVars(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl serde::Serialize for EnvVars {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("64 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_bytes("MiB").unwrap_err().contains("number"));
        assert!(parse_bytes("0.5B").unwrap_err().contains("whole"));
    }

    #[test]
    fn sizes_display_round_trip() {
        for s in ["64MiB", "1GiB", "3KiB", "1000B", "2TiB"] {
            let b = ByteSize(parse_bytes(s).unwrap());
            assert_eq!(b.to_string(), s);
        }
    }

    #[test]
    fn env_is_a_table_or_a_list() {
        #[derive(serde::Deserialize)]
        struct T {
            env: EnvVars,
        }
        let a: T = toml::from_str("env = { A = \"1\", B = \"x=y\" }").unwrap();
        let b: T = toml::from_str("env = [\"B=x=y\", \"A=1\"]").unwrap();
        assert_eq!(a.env, b.env);
        assert_eq!(a.env.to_list(), ["A=1", "B=x=y"]);
        let e = toml::from_str::<T>("env = [\"A\"]").err().unwrap();
        assert!(e.message().contains("not NAME=value"), "{e}");
    }
}
