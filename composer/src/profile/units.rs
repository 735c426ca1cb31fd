//! Sizes as people write them in YAML (`64 MiB`, `2GiB`, `1048576`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// One mebibyte: the alignment unit of partitions and disk sizes.
pub const MIB: u64 = 1 << 20;

/// A size in bytes, or `auto` (computed from the contents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Size {
    /// Computed from what has to fit, plus headroom.
    #[default]
    Auto,
    /// Exactly this many bytes.
    Bytes(u64),
}

impl Size {
    /// Parses `auto`, a plain byte count, or a number with a binary (KiB,
    /// MiB, GiB, TiB) or decimal (K, M, G, T; KB, MB, GB) suffix.
    pub fn parse(text: &str) -> Result<Size, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("auto") {
            return Ok(Size::Auto);
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("`{text}` is not a size; write e.g. `512 MiB`, `2 GiB` or `auto`")
        })?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "K" | "KB" => 1_000,
            "M" | "MB" => 1_000_000,
            "G" | "GB" => 1_000_000_000,
            "T" | "TB" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{text}`; use B, KiB, MiB, GiB or TiB"
                ))
            }
        };
        n.checked_mul(mult)
            .map(Size::Bytes)
            .ok_or_else(|| format!("size `{text}` is too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Auto => f.write_str("auto"),
            Size::Bytes(b) => f.write_str(&human(*b)),
        }
    }
}

/// Renders a byte count the way people read it (`64 MiB`, `1.5 GiB`, `1234 B`).
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, unit) in UNITS {
        if bytes >= unit {
            if bytes.is_multiple_of(unit) {
                return format!("{} {name}", bytes / unit);
            }
            return format!("{:.1} {name}", bytes as f64 / unit as f64);
        }
    }
    format!("{bytes} B")
}

/// Rounds up to a whole number of `unit`s.
pub fn round_up(n: u64, unit: u64) -> u64 {
    n.div_ceil(unit) * unit
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size::Bytes(n)),
            Raw::S(s) => Size::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Size::Auto => s.serialize_str("auto"),
            Size::Bytes(b) => s.serialize_u64(*b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(Size::parse("64 MiB"), Ok(Size::Bytes(64 * MIB)));
        assert_eq!(Size::parse("2GiB"), Ok(Size::Bytes(2 << 30)));
        assert_eq!(Size::parse("auto"), Ok(Size::Auto));
        assert_eq!(Size::parse("1000"), Ok(Size::Bytes(1000)));
        assert!(Size::parse("12 parsecs")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(Size::parse("big").is_err());
    }

    #[test]
    fn renders_sizes() {
        assert_eq!(human(64 * MIB), "64 MiB");
        assert_eq!(human(3 * MIB / 2), "1.5 MiB");
        assert_eq!(human(100), "100 B");
    }
}
