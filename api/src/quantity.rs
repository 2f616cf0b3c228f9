//! Resource quantities (`100m`, `0.5`, `128Mi`, `1G`, `1e3`), parsed exactly.
//!
//! A quantity is held as an integer count of nano-units (10^-9), which represents every
//! suffix Kubernetes accepts without floating point: `1Ei` is 2^60 units, 1.15e27 nanos,
//! well inside an `i128`. The text the user wrote is kept so that objects round-trip.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const NANOS: i128 = 1_000_000_000;

/// A parsed resource quantity; keeps the original text for display and round trips.
#[derive(Clone, Debug)]
pub struct Quantity {
    text: String,
    nanos: i128,
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}
impl Eq for Quantity {}

/// Why a quantity's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("quantity is empty")]
    Empty,
    #[error(
        "{0:?} is not a quantity: expected a number with an optional suffix (m, k, M, G, Ki, Mi, Gi, ...)"
    )]
    Syntax(String),
    #[error(
        "{0:?} has an unknown suffix {1:?} (use n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei)"
    )]
    Suffix(String, String),
    #[error("{0:?} is too large")]
    Overflow(String),
}

impl Quantity {
    /// Parses a Kubernetes quantity string.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let s = text.trim();
        if s.is_empty() {
            return Err(QuantityError::Empty);
        }
        let syntax = || QuantityError::Syntax(text.to_string());
        let (negative, body) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        // The numeric part: digits, optionally one '.', more digits.
        let num_end = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (number, suffix) = body.split_at(num_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(syntax());
        }
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        // Mantissa as an integer with a decimal scale: 1.25 -> (125, 2).
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 30 {
            return Err(QuantityError::Overflow(text.to_string()));
        }
        let mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| syntax())?
        };
        let mut scale10: i32 = -(frac_part.len() as i32);
        let mut binary_shift: u32 = 0;
        match suffix {
            "" => {}
            "n" => scale10 -= 9,
            "u" => scale10 -= 6,
            "m" => scale10 -= 3,
            "k" => scale10 += 3,
            "M" => scale10 += 6,
            "G" => scale10 += 9,
            "T" => scale10 += 12,
            "P" => scale10 += 15,
            "E" => scale10 += 18,
            "Ki" => binary_shift = 10,
            "Mi" => binary_shift = 20,
            "Gi" => binary_shift = 30,
            "Ti" => binary_shift = 40,
            "Pi" => binary_shift = 50,
            "Ei" => binary_shift = 60,
            _ if suffix.starts_with(['e', 'E']) => {
                let exp: i32 = suffix[1..].parse().map_err(|_| syntax())?;
                if !(-30..=30).contains(&exp) {
                    return Err(QuantityError::Overflow(text.to_string()));
                }
                scale10 += exp;
            }
            _ => return Err(QuantityError::Suffix(text.to_string(), suffix.to_string())),
        }
        let overflow = || QuantityError::Overflow(text.to_string());
        // value = mantissa * 10^scale10 * 2^shift, in nanos: multiply by 1e9 first.
        let mut nanos = mantissa.checked_mul(NANOS).ok_or_else(overflow)?;
        nanos = nanos
            .checked_mul(1i128 << binary_shift)
            .ok_or_else(overflow)?;
        if scale10 >= 0 {
            let factor = 10i128.checked_pow(scale10 as u32).ok_or_else(overflow)?;
            nanos = nanos.checked_mul(factor).ok_or_else(overflow)?;
        } else {
            let divisor = 10i128.checked_pow((-scale10) as u32).ok_or_else(overflow)?;
            // Precision below one nano-unit rounds up, as Kubernetes does.
            nanos = (nanos + divisor - 1) / divisor;
        }
        if nanos > i128::MAX / 1024 {
            return Err(overflow());
        }
        Ok(Quantity {
            text: s.to_string(),
            nanos: if negative { -nanos } else { nanos },
        })
    }

    /// The value in nano-units (10^-9).
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    /// The value in milli-units, rounded up (the unit of CPU requests).
    pub fn millis(&self) -> i64 {
        let v =
            self.nanos.div_euclid(1_000_000) + i128::from(self.nanos.rem_euclid(1_000_000) != 0);
        v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }

    /// The value in whole units, rounded up (the unit of memory: bytes).
    pub fn value(&self) -> i64 {
        let v = self.nanos.div_euclid(NANOS) + i128::from(self.nanos.rem_euclid(NANOS) != 0);
        v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }

    /// Whether the quantity is below zero.
    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// The text as written by the user.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A quantity of whole units, e.g. a byte count.
    pub fn from_value(v: i64) -> Self {
        Quantity {
            text: v.to_string(),
            nanos: i128::from(v) * NANOS,
        }
    }

    /// A quantity of milli-units, e.g. CPU; written as `500m` or `2`.
    pub fn from_millis(m: i64) -> Self {
        let text = if m % 1000 == 0 {
            (m / 1000).to_string()
        } else {
            format!("{m}m")
        };
        Quantity {
            text,
            nanos: i128::from(m) * 1_000_000,
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as \"100m\", \"0.5\" or \"128Mi\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Quantity, E> {
                Quantity::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quantity, E> {
                Quantity::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quantity, E> {
                Quantity::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quantity, E> {
                if !v.is_finite() {
                    return Err(E::custom("quantity must be a finite number"));
                }
                // YAML `cpu: 0.5` arrives as a float; its shortest decimal text is exact.
                Quantity::parse(&format!("{v}")).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A fixed-point number with an optional suffix: `250m` (thousandths), `128Mi` (powers of 1024), `1G` (powers of 1000), or a plain number.",
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_exactly() {
        assert_eq!(q("100m").millis(), 100);
        assert_eq!(q("0.5").millis(), 500);
        assert_eq!(q("1").millis(), 1000);
        assert_eq!(q("2.5").millis(), 2500);
        assert_eq!(q("128Mi").value(), 128 * 1024 * 1024);
        assert_eq!(q("1G").value(), 1_000_000_000);
        assert_eq!(q("1.5Gi").value(), 3 * 512 * 1024 * 1024);
        assert_eq!(q("1e3").value(), 1000);
        assert_eq!(q("1E3").value(), 1000);
        assert_eq!(q("1E").value(), 1_000_000_000_000_000_000);
        assert_eq!(q("64k").value(), 64_000);
        assert_eq!(q("1Ki").value(), 1024);
        assert_eq!(q("250n").nanos(), 250);
        assert_eq!(q("0.1m").nanos(), 100_000);
        assert_eq!(q("0").value(), 0);
        assert!(q("-1").is_negative());
        assert_eq!(q("1Ei").nanos(), (1i128 << 60) * NANOS);
    }

    #[test]
    fn rounds_up_below_a_nano_and_in_conversions() {
        assert_eq!(q("0.1n").nanos(), 1);
        assert_eq!(q("1.0001").millis(), 1001);
        assert_eq!(q("100m").value(), 1);
    }

    #[test]
    fn equality_is_by_value() {
        assert_eq!(q("1Gi"), q("1024Mi"));
        assert_eq!(q("0.5"), q("500m"));
        assert_ne!(q("1G"), q("1Gi"));
    }

    #[test]
    fn refuses_bad_text() {
        for bad in [
            "", "abc", "1.2.3", "12XB", "1Qi", ".", "--1", "1e", "1e99", "m",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} should fail");
        }
        assert!(matches!(Quantity::parse("5Xi"), Err(QuantityError::Suffix(_, s)) if s == "Xi"));
        assert!(matches!(
            Quantity::parse("9999999999999999999999999999999Ei"),
            Err(QuantityError::Overflow(_))
        ));
    }

    #[test]
    fn deserializes_numbers_and_strings() {
        let v: Quantity = serde_json::from_str("0.5").unwrap();
        assert_eq!(v.millis(), 500);
        let v: Quantity = serde_json::from_str("2").unwrap();
        assert_eq!(v.millis(), 2000);
        let v: Quantity = serde_json::from_str("\"256Mi\"").unwrap();
        assert_eq!(v.value(), 256 << 20);
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"256Mi\"");
        assert!(serde_json::from_str::<Quantity>("true").is_err());
    }

    #[test]
    fn constructors_round_trip() {
        assert_eq!(Quantity::from_millis(500).as_str(), "500m");
        assert_eq!(Quantity::from_millis(2000).as_str(), "2");
        assert_eq!(Quantity::from_value(1024).value(), 1024);
    }
}
