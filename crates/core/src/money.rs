//! Money as an exact integer: nano-US-dollars (1e-9 USD) in an `i64`, which
//! holds ±9.2 billion dollars — enough for any ledger total — and prices as
//! small as a fraction of a micro-dollar per token without rounding. Sums of
//! money are integer sums; floats never touch it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Code, Error};

pub const NANOS_PER_USD: i64 = 1_000_000_000;

/// An amount of US dollars, exact to the nano-dollar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(i64);

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn from_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    pub const fn nanos(self) -> i64 {
        self.0
    }

    pub fn from_usd_units(usd: i64) -> Self {
        Self(usd.saturating_mul(NANOS_PER_USD))
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }
}

impl fmt::Display for Money {
    /// A plain decimal in dollars with trailing zeros trimmed to at least two
    /// places: `1.5` → `1.50`, one nano-dollar → `0.000000001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / NANOS_PER_USD as u64;
        let frac = format!("{:09}", abs % NANOS_PER_USD as u64);
        let trimmed = frac.trim_end_matches('0');
        let frac = if trimmed.len() < 2 { &frac[..2] } else { trimmed };
        write!(f, "{sign}{whole}.{frac}")
    }
}

impl FromStr for Money {
    type Err = Error;

    /// Parses a decimal dollar amount with at most nine decimals, e.g.
    /// `"2.50"`, `"0.000075"`, `"-3"`. No exponents, no floats.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::new(Code::InvalidRequest, format!("{s:?} is not a dollar amount like \"2.50\""));
        let (neg, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty() && frac.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
            || frac.len() > 9
        {
            return Err(bad());
        }
        let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
        let frac_nanos: i64 =
            if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().map_err(|_| bad())? };
        let nanos =
            whole.checked_mul(NANOS_PER_USD).and_then(|n| n.checked_add(frac_nanos)).ok_or_else(bad)?;
        Ok(Money(if neg { -nanos } else { nanos }))
    }
}

/// Serialized as a decimal string, so JSON clients never see a float.
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e: Error| serde::de::Error::custom(e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_exactly() {
        for (text, nanos, shown) in [
            ("2.50", 2_500_000_000, "2.50"),
            ("0.000075", 75_000, "0.000075"),
            ("3", 3_000_000_000, "3.00"),
            ("-1.5", -1_500_000_000, "-1.50"),
            (".25", 250_000_000, "0.25"),
            ("0.000000001", 1, "0.000000001"),
        ] {
            let m: Money = text.parse().unwrap();
            assert_eq!(m.nanos(), nanos, "{text}");
            assert_eq!(m.to_string(), shown);
            assert_eq!(m.to_string().parse::<Money>().unwrap(), m);
        }
        for bad in ["", ".", "1e3", "1.0000000001", "abc", "1,5", "--1", "99999999999999999999"] {
            assert!(bad.parse::<Money>().is_err(), "{bad}");
        }
    }

    #[test]
    fn json_is_a_string() {
        let m = Money::from_nanos(1_230_000_000);
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"1.23\"");
        assert_eq!(serde_json::from_str::<Money>("\"1.23\"").unwrap(), m);
        assert!(serde_json::from_str::<Money>("1.23").is_err());
    }
}
