//! Human units in config and topology files: sizes and rates (`"1.5GB"`, `"64MiB"`,
//! `"300MB/s"`, `"10Gbit/s"`) and durations (`"500ms"`, `"2s"`, `"5m"`, `"24h"`).
//!
//! Decimal prefixes are powers of ten (`MB` = 10^6 bytes), binary ones powers of two
//! (`MiB` = 2^20 bytes); `bit` units are eighths of a byte (`Gbit` = 10^9 bits). Unit names are
//! case-sensitive so that `Mb` (megabit to some, megabyte to others) is rejected instead of
//! guessed. A bare number is a count of bytes (or bytes per second).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Why a size or rate did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{0:?} does not start with a number")]
    NoNumber(String),
    #[error(
        "{text:?}: unknown unit {unit:?} (use B, kB, MB, GB, TB, KiB, MiB, GiB, TiB, bit, kbit, Mbit, Gbit, Tbit)"
    )]
    UnknownUnit { text: String, unit: String },
    #[error("{0:?} is a rate: sizes take no \"/s\"")]
    RateGivenForSize(String),
    #[error("{0:?} is not a rate: add \"/s\"")]
    MissingPerSecond(String),
    #[error("{0:?} is not a whole number of bytes")]
    FractionalBytes(String),
    #[error("{0:?} is negative, not finite, or too large")]
    OutOfRange(String),
}

/// Bytes per unit. Bits count as an eighth of a byte.
fn unit_bytes(unit: &str) -> Option<f64> {
    let bytes = match unit {
        "" | "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "bit" => 1.0 / 8.0,
        "kbit" | "Kbit" => 1e3 / 8.0,
        "Mbit" => 1e6 / 8.0,
        "Gbit" => 1e9 / 8.0,
        "Tbit" => 1e12 / 8.0,
        _ => return None,
    };
    Some(bytes)
}

/// Splits `"1.5 GB"` into `(1.5, "GB")`.
fn split_number(text: &str) -> Result<(f64, &str), UnitError> {
    let trimmed = text.trim();
    let number_end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(trimmed.len());
    let digits: String = trimmed[..number_end]
        .chars()
        .filter(|&c| c != '_')
        .collect();
    let number: f64 = digits
        .parse()
        .map_err(|_| UnitError::NoNumber(text.to_string()))?;
    Ok((number, trimmed[number_end..].trim()))
}

fn scaled(text: &str, unit: &str, number: f64) -> Result<f64, UnitError> {
    let Some(per_unit) = unit_bytes(unit) else {
        return Err(UnitError::UnknownUnit {
            text: text.to_string(),
            unit: unit.to_string(),
        });
    };
    let value = number * per_unit;
    if !(0.0..=1e18).contains(&value) {
        return Err(UnitError::OutOfRange(text.to_string()));
    }
    Ok(value)
}

/// Parses a size such as `"1.5GB"`, `"64MiB"` or `"4096"` into bytes.
pub fn parse_bytes(text: &str) -> Result<u64, UnitError> {
    let (number, unit) = split_number(text)?;
    if unit.ends_with("/s") {
        return Err(UnitError::RateGivenForSize(text.to_string()));
    }
    let value = scaled(text, unit, number)?;
    let rounded = value.round();
    if (value - rounded).abs() > 1e-6 * value.max(1.0) {
        return Err(UnitError::FractionalBytes(text.to_string()));
    }
    Ok(rounded as u64)
}

/// Parses a rate such as `"300MB/s"` or `"10Gbit/s"` into bytes per second.
pub fn parse_bytes_per_s(text: &str) -> Result<f64, UnitError> {
    let (number, unit) = split_number(text)?;
    let Some(unit) = unit.strip_suffix("/s") else {
        if unit.is_empty() {
            return scaled(text, unit, number); // a bare number is bytes per second
        }
        return Err(UnitError::MissingPerSecond(text.to_string()));
    };
    scaled(text, unit.trim(), number)
}

/// A size in bytes, written in a topology file as an integer or a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

/// A rate in bytes per second, written as a number or a string with a unit and `/s`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct BytesPerSecond(pub f64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        struct BytesVisitor;
        impl Visitor<'_> for BytesVisitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count or a size such as \"1.5GB\" or \"64MiB\"")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Bytes, E> {
                Ok(Bytes(value))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Bytes, E> {
                u64::try_from(value)
                    .map(Bytes)
                    .map_err(|_| E::custom(format!("size {value} is negative")))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Bytes, E> {
                parse_bytes(text).map(Bytes).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(BytesVisitor)
    }
}

impl<'de> Deserialize<'de> for BytesPerSecond {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<BytesPerSecond, D::Error> {
        struct RateVisitor;
        impl Visitor<'_> for RateVisitor {
            type Value = BytesPerSecond;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes per second, or a rate such as \"300MB/s\" or \"10Gbit/s\"")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<BytesPerSecond, E> {
                Ok(BytesPerSecond(value as f64))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<BytesPerSecond, E> {
                if value < 0 {
                    return Err(E::custom(format!("rate {value} is negative")));
                }
                Ok(BytesPerSecond(value as f64))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<BytesPerSecond, E> {
                if !value.is_finite() || value < 0.0 {
                    return Err(E::custom(format!("rate {value} is negative or not finite")));
                }
                Ok(BytesPerSecond(value))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<BytesPerSecond, E> {
                parse_bytes_per_s(text)
                    .map(BytesPerSecond)
                    .map_err(E::custom)
            }
        }
        deserializer.deserialize_any(RateVisitor)
    }
}

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration (a number and one of ms, s, m, h, d; a bare number is seconds)")]
pub struct DurationError(pub String);

/// Parses a duration such as `"500ms"`, `"2s"`, `"1.5m"`, `"24h"` or `"7d"`; a bare number is
/// seconds. At most 100 years.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, DurationError> {
    let bad = || DurationError(text.to_string());
    let (number, unit) = split_number(text).map_err(|_| bad())?;
    let seconds_per_unit = match unit {
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(bad()),
    };
    let seconds = number * seconds_per_unit;
    if !(0.0..=100.0 * 365.0 * 86_400.0).contains(&seconds) {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// A duration in a config file: a string with a unit (`"2s"`, `"24h"`), or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub std::time::Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Span, D::Error> {
        struct SpanVisitor;
        impl Visitor<'_> for SpanVisitor {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"2s\" or \"24h\", or seconds")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Span, E> {
                parse_duration(&value.to_string())
                    .map(Span)
                    .map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Span, E> {
                parse_duration(&value.to_string())
                    .map(Span)
                    .map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Span, E> {
                parse_duration(&value.to_string())
                    .map(Span)
                    .map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Span, E> {
                parse_duration(text).map(Span).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SpanVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        use std::time::Duration;
        for (text, expected) in [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("2", Duration::from_secs(2)),
            ("1.5m", Duration::from_secs(90)),
            ("24h", Duration::from_secs(86_400)),
            ("7d", Duration::from_secs(7 * 86_400)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        for text in ["", "s", "2 weeks", "-1s", "2S", "1e9d", "ms5"] {
            assert!(parse_duration(text).is_err(), "{text} parsed");
        }
    }

    fn check_bytes(text: &str, expected: Result<u64, &str>) {
        match (parse_bytes(text), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{text:?}"),
            (Err(error), Err(fragment)) => {
                let message = error.to_string();
                assert!(message.contains(fragment), "{text:?}: {message}");
            }
            (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
        }
    }

    fn check_rate(text: &str, expected: Result<f64, &str>) {
        match (parse_bytes_per_s(text), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{text:?}"),
            (Err(error), Err(fragment)) => {
                let message = error.to_string();
                assert!(message.contains(fragment), "{text:?}: {message}");
            }
            (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn sizes() {
        check_bytes("1.5GB", Ok(1_500_000_000));
        check_bytes("64MiB", Ok(64 << 20));
        check_bytes("1 GiB", Ok(1 << 30));
        check_bytes("100GiB", Ok(100 << 30));
        check_bytes("20GiB", Ok(20 << 30));
        check_bytes("4096", Ok(4096));
        check_bytes("4_096B", Ok(4096));
        check_bytes("2kB", Ok(2000));
        check_bytes("1TB", Ok(1_000_000_000_000));
        check_bytes("8bit", Ok(1));
        check_bytes("1.5B", Err("whole number"));
        check_bytes("1.5Mb", Err("unknown unit \"Mb\""));
        check_bytes("GB", Err("does not start with a number"));
        check_bytes("-1GB", Err("does not start with a number"));
        check_bytes("300MB/s", Err("sizes take no"));
    }

    #[test]
    fn rates() {
        check_rate("300MB/s", Ok(300e6));
        check_rate("10Gbit/s", Ok(1.25e9));
        check_rate("1 Gbit/s", Ok(125e6));
        check_rate("1MiB/s", Ok(1048576.0));
        check_rate("1000", Ok(1000.0));
        check_rate("10Gbit", Err("add \"/s\""));
        check_rate("10Gbps/s", Err("unknown unit"));
    }

    #[test]
    fn deserialize_both_forms() {
        #[derive(Debug, Deserialize)]
        struct Probe {
            a: Bytes,
            b: Bytes,
            c: BytesPerSecond,
            d: BytesPerSecond,
        }
        let probe: Probe =
            toml::from_str("a = 12\nb = \"1KiB\"\nc = 2.5\nd = \"8bit/s\"").expect("probe parses");
        assert_eq!(probe.a, Bytes(12));
        assert_eq!(probe.b, Bytes(1024));
        assert_eq!(probe.c, BytesPerSecond(2.5));
        assert_eq!(probe.d, BytesPerSecond(1.0));
        let error = toml::from_str::<Probe>("a = \"1Mb\"\nb = 1\nc = 1\nd = 1")
            .expect_err("1Mb is rejected")
            .to_string();
        assert!(error.contains("unknown unit"), "{error}");
    }
}
