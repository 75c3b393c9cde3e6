//! Kubernetes resource quantities (`100m`, `0.5`, `64Mi`, `1e3`), read exactly as the API
//! server reads them, so that a proxy's request and limit compare as Kubernetes compares
//! them: in floating point `700m` is above `0.7`, and `9007199254740993` is not above
//! `9007199254740992`, and the API server refuses or admits pods the injector judged
//! otherwise.

/// A non-negative quantity in nano-units (`1n`), the finest Kubernetes keeps: it rounds
/// finer values up (`0.1n` is `1n`), as the API server does. At most `2^63-1` units:
/// larger values Kubernetes caps, or not, depending on how they are written (`10E` is
/// kept, `10000000000000000000` is capped), so which of two of them is larger is not
/// well defined — and no node has that many cores or bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(u128);

/// Nano-units per unit.
const NANO: u128 = 1_000_000_000;
/// `2^63-1` units, the largest quantity Kubernetes holds as written.
const MAX: u128 = (i64::MAX as u128) * NANO;

impl Quantity {
    /// Parses `<sign><number><suffix>`: a number `1`, `1.5`, `1.` or `.5`; a suffix of
    /// none, `n`, `u`, `m`, `k`, `M`, `G`, `T`, `P`, `E`, `Ki` … `Ei`, or an exponent
    /// `e3`, `E-2`. Negative quantities are refused: Kubernetes refuses them for requests
    /// and limits.
    pub fn parse(s: &str) -> Result<Quantity, String> {
        let bad = || format!("{s:?} is not a Kubernetes quantity (e.g. 100m, 0.5, 64Mi)");
        let (negative, body) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let end = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
        let (number, suffix) = body.split_at(end);
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(bad());
        }
        // The value is `digits` × 10^`exp` × 1024^`binary`.
        let (mut exp, binary): (i64, u32) = match suffix {
            "" => (0, 0),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 1),
            "Mi" => (0, 2),
            "Gi" => (0, 3),
            "Ti" => (0, 4),
            "Pi" => (0, 5),
            "Ei" => (0, 6),
            e if e.starts_with(['e', 'E']) => {
                let exponent = &e[1..];
                let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                // Kubernetes keeps the exponent in 32 bits: beyond, it reads another number.
                let exponent: i32 =
                    exponent.parse().map_err(|_| format!("{s:?}: the exponent is out of range"))?;
                (i64::from(exponent), 0)
            }
            _ => return Err(bad()),
        };
        exp -= frac.len() as i64;
        let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
        for _ in 0..binary {
            times_1024(&mut digits);
        }
        // Without leading and trailing zeros: `digits` × 10^`exp`, the last digit non-zero.
        let lead = digits.iter().take_while(|d| **d == 0).count();
        digits.drain(..lead);
        while digits.last() == Some(&0) {
            digits.pop();
            exp += 1;
        }
        if digits.is_empty() {
            return Ok(Quantity(0));
        }
        if negative {
            return Err(format!("{s:?} is negative"));
        }
        let too_large =
            || format!("{s:?} is too large for a Kubernetes quantity (at most 2^63-1 units)");
        // In nano-units: digits × 10^shift.
        let shift = exp + 9;
        let kept = (digits.len() as i64 + shift.min(0)).max(0) as usize;
        if kept as i64 + shift.max(0) > 40 {
            return Err(too_large());
        }
        let mut nano: u128 = 0;
        for d in &digits[..kept] {
            nano = nano
                .checked_mul(10)
                .and_then(|n| n.checked_add(u128::from(*d)))
                .ok_or_else(too_large)?;
        }
        for _ in 0..shift.max(0) {
            nano = nano.checked_mul(10).ok_or_else(too_large)?;
        }
        // What is below a nano-unit (non-zero: the last digit is) rounds up, as in Kubernetes.
        if kept < digits.len() {
            nano += 1;
        }
        if nano > MAX {
            return Err(too_large());
        }
        Ok(Quantity(nano))
    }

    /// Whole units, rounded up (`1001m` is 2): the cores a CPU limit lets the proxy use.
    pub fn ceil_units(self) -> u64 {
        // At most 2^63-1 units: fits.
        u64::try_from(self.0.div_ceil(NANO)).unwrap_or(u64::MAX)
    }

    /// The value in units, approximately.
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / NANO as f64
    }
}

/// Multiplies the decimal number `digits` (most significant first) by 1024.
fn times_1024(digits: &mut Vec<u8>) {
    let mut carry = 0u32;
    for d in digits.iter_mut().rev() {
        let v = u32::from(*d) * 1024 + carry;
        *d = (v % 10) as u8;
        carry = v / 10;
    }
    while carry > 0 {
        digits.insert(0, (carry % 10) as u8);
        carry /= 10;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_notation_reads_as_kubernetes_reads_it() {
        for (s, nano) in [
            ("0", 0),
            ("-0", 0),
            ("+0.000", 0),
            ("1", NANO),
            ("+1", NANO),
            ("1.", NANO),
            (".5", NANO / 2),
            ("100m", NANO / 10),
            ("250u", 250_000),
            ("7n", 7),
            ("1k", 1000 * NANO),
            ("1E", 10u128.pow(18) * NANO),
            ("1Ki", 1024 * NANO),
            ("1.5Gi", 1536 * 1024 * 1024 * NANO),
            ("64Mi", 64 * 1024 * 1024 * NANO),
            ("1e3", 1000 * NANO),
            ("1E3", 1000 * NANO),
            ("1e+3", 1000 * NANO),
            ("15e-1", 1500 * NANO / 1000),
            ("3e-1", 3 * NANO / 10),
            ("007", 7 * NANO),
        ] {
            assert_eq!(q(s), Quantity(nano), "{s}");
        }
    }

    #[test]
    fn below_a_nano_unit_rounds_up() {
        assert_eq!(q("0.1n"), q("1n"));
        assert_eq!(q("1e-30"), q("1n"));
        assert_eq!(q("1.0000000001"), q("1000000001n"));
        assert_eq!(q("0.0000000001Ki"), q("103n"), "102.4n");
        assert_eq!(q("1e-2000000000"), q("1n"));
    }

    /// The audit's cases: in f64 `700m` was above `0.7` and `3e-1` above `300m`, and the
    /// memory request one byte above its limit was not.
    #[test]
    fn equal_values_compare_equal_and_one_unit_more_is_more() {
        assert_eq!(q("700m"), q("0.7"));
        assert_eq!(q("3e-1"), q("300m"));
        assert_eq!(q("1Ki"), q("1024"));
        assert_eq!(q("1.5"), q("1500m"));
        assert_eq!(q("1000000u"), q("1"));
        assert!(q("9007199254740993") > q("9007199254740992"));
        assert!(q("9223372036854775807") > q("9223372036854775806999999999n"));
        assert!(q("1n") > q("0"));
    }

    #[test]
    fn what_kubernetes_refuses_is_refused() {
        for bad in [
            "", " 1", "1 ", "-1", "-1m", "1x", "m", "1.2.3", "1Mib", "1e", "1e+", "1e1.5", "abc",
            ".", "+", "1K", "1ki", "1mi", "e3", "1..", "0x10", "1_000", "1,5",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?}");
        }
        let negative = Quantity::parse("-2").unwrap_err();
        assert!(negative.contains("negative"), "{negative}");
    }

    #[test]
    fn more_than_kubernetes_holds_is_refused() {
        assert_eq!(q("9223372036854775807"), Quantity(MAX));
        assert_eq!(q("7Ei"), Quantity(7 * (1 << 60) * NANO));
        for big in ["9223372036854775808", "8Ei", "10E", "1e19", "198E390", "1e4000000", "1e308"] {
            let e = Quantity::parse(big).unwrap_err();
            assert!(e.contains("too large"), "{big}: {e}");
        }
        let e = Quantity::parse("1e2147483648").unwrap_err();
        assert!(e.contains("exponent"), "{e}");
    }

    #[test]
    fn whole_units_round_up() {
        assert_eq!(q("250m").ceil_units(), 1);
        assert_eq!(q("1").ceil_units(), 1);
        assert_eq!(q("1001m").ceil_units(), 2);
        assert_eq!(q("1.0000000001").ceil_units(), 2);
        assert_eq!(q("0").ceil_units(), 0);
        assert_eq!(q("9223372036854775807").ceil_units(), i64::MAX as u64);
    }
}
