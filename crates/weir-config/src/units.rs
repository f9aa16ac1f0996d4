//! Durations (`250ms`, `5s`, `1m`, `2h`) and sizes (`512B`, `16KiB`, `10MiB`, `1GiB`).
//!
//! Both types keep the text as written (that is what `GET /config` shows) and the parsed value
//! or the reason it did not parse. Parsing never fails deserialization: a bad duration is
//! reported by validation at its key path, next to every other problem of the same route,
//! instead of hiding them.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

const DURATION_HINT: &str = "a duration such as 250ms, 5s, 1m, 2h or 30d";

/// A duration as written in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Dur {
    text: String,
    parsed: Result<Duration, String>,
}

impl Dur {
    /// A default; the text is a constant of this crate, so it parses.
    pub(crate) fn default_of(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            parsed: parse_duration(text),
        }
    }

    pub(crate) fn get(&self) -> Result<Duration, String> {
        self.parsed.clone()
    }

    /// The duration as written, for messages that compare two of them.
    pub(crate) fn text(&self) -> &str {
        self.text.trim()
    }
}

/// Parses `250ms`, `5s`, `1m`, `2h`, `30d`: a whole number and a unit.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("expected {DURATION_HINT}, found an empty string"));
    }
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    if unit.is_empty() {
        return Err("a duration needs a unit: ms, s, m, h, d (e.g. 5s)".to_owned());
    }
    let scale: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("\"{t}\" is not {DURATION_HINT}")),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("\"{t}\" is not {DURATION_HINT}"))?;
    n.checked_mul(scale)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("\"{t}\" is too long"))
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurVisitor)
    }
}

struct DurVisitor;

impl DurVisitor {
    fn bare(text: String) -> Dur {
        Dur {
            text,
            parsed: Err("a duration needs a unit: ms, s, m, h, d (e.g. 5s)".to_owned()),
        }
    }
}

impl Visitor<'_> for DurVisitor {
    type Value = Dur;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(DURATION_HINT)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
        Ok(Dur {
            text: v.to_owned(),
            parsed: parse_duration(v),
        })
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
        Ok(Self::bare(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
        Ok(Self::bare(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
        Ok(Self::bare(v.to_string()))
    }
}

const SIZE_HINT: &str = "a size such as 512B, 16KiB, 10MiB or 1GiB";

/// A size in bytes as written in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Size {
    text: String,
    parsed: Result<u64, String>,
}

impl Size {
    pub(crate) fn default_of(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            parsed: parse_size(text),
        }
    }

    pub(crate) fn get(&self) -> Result<u64, String> {
        self.parsed.clone()
    }
}

/// Parses `512B`, `16KiB`, `10MiB`, `1GiB`, or a plain number of bytes.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    let scale: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" | "mb" | "gb" | "k" | "m" | "g" => {
            return Err(format!(
                "\"{t}\" is ambiguous: sizes use binary units B, KiB, MiB, GiB (1KiB = 1024 bytes)"
            ));
        }
        _ => return Err(format!("\"{t}\" is not {SIZE_HINT}")),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("\"{t}\" is not {SIZE_HINT}"))?;
    n.checked_mul(scale)
        .ok_or_else(|| format!("\"{t}\" is too large"))
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A plain byte count stays a number, as it was written.
        match self.text.parse::<u64>() {
            Ok(n) => s.serialize_u64(n),
            Err(_) => s.serialize_str(&self.text),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SizeVisitor)
    }
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = Size;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SIZE_HINT)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
        Ok(Size {
            text: v.to_owned(),
            parsed: parse_size(v),
        })
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
        Ok(Size {
            text: v.to_string(),
            parsed: Ok(v),
        })
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
        Ok(Size {
            text: v.to_string(),
            parsed: u64::try_from(v).map_err(|_| "a size cannot be negative".to_owned()),
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Size, E> {
        Ok(Size {
            text: v.to_string(),
            parsed: Err(format!("expected {SIZE_HINT}, found a fraction")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(
            parse_duration("30").unwrap_err(),
            "a duration needs a unit: ms, s, m, h, d (e.g. 5s)"
        );
        assert_eq!(
            parse_duration("1.5s").unwrap_err(),
            "\"1.5s\" is not a duration such as 250ms, 5s, 1m, 2h or 30d"
        );
        assert!(parse_duration("5 sec").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("18446744073709551615h").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("10MB").unwrap_err().contains("binary units"));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("-1KiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
