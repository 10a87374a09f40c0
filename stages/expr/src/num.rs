//! Numbers: exact decimals where they fit, `f64` where they do not.
//!
//! Money columns are the common case (`12.34`, `0.1`), and `12.34 * 100` must be `1234`,
//! not `1233.9999999999998`. So a number is a [`Dec`] (an `i64` mantissa and a decimal
//! scale of at most [`MAX_SCALE`] digits) as long as the result of an operation fits one,
//! and an `f64` otherwise: `+ - * %` stay exact unless they overflow; `/` is exact when the
//! quotient has a finite decimal expansion (`10 / 4 == 2.5`) and `f64` otherwise
//! (`1 / 3`). Intermediate results are computed in `i128`, so nothing here allocates.

use std::cmp::Ordering;

/// The most digits after the decimal point an exact number keeps.
pub const MAX_SCALE: u8 = 18;

/// An exact decimal: `m / 10^scale`.
///
/// `repr(C)` keeps `m` at offset 0 and `scale` after it: left to itself rustc packs
/// `scale` next to the enum tags of [`Num`] and `Val`, and the per-row copies of those
/// values then stall on unaligned loads (measured: `amount * 100` ran 1.5x slower).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dec {
    /// The digits, as an integer.
    pub m: i64,
    /// How many of the digits are after the decimal point (at most [`MAX_SCALE`]).
    pub scale: u8,
}

/// A number: exact, or a float when exactness was not possible.
///
/// Equality and order are numeric: `1.50 == 1.5`, and an exact number equals a float of
/// the same value.
#[derive(Debug, Clone, Copy)]
pub enum Num {
    /// An exact decimal (integers have scale 0).
    Dec(Dec),
    /// A binary float, for division results and values that overflow a [`Dec`].
    Float(f64),
}

const fn pow10_table() -> [i128; 39] {
    let mut t = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
}

/// `10^i` for `i` in `0..=38` (every power of ten an `i128` holds).
const POW10: [i128; 39] = pow10_table();

fn pow10(i: u32) -> Option<i128> {
    POW10.get(i as usize).copied()
}

impl Dec {
    /// Makes a decimal from a wider mantissa, dropping trailing zeros from the fraction
    /// until it fits an `i64` with at most [`MAX_SCALE`] decimals. `None` when it cannot.
    fn fit(mut m: i128, mut scale: u32) -> Option<Dec> {
        if m == 0 {
            // Zero at any scale: `0e-99999` must not strip 99999 zeros one by one.
            return Some(Dec { m: 0, scale: 0 });
        }
        while scale > MAX_SCALE as u32 || i64::try_from(m).is_err() {
            if scale == 0 || m % 10 != 0 {
                return None;
            }
            m /= 10;
            scale -= 1;
        }
        Some(Dec {
            m: m as i64,
            scale: scale as u8,
        })
    }

    /// The same value with no trailing zeros after the decimal point (`1.50` -> `1.5`).
    pub fn normalize(self) -> Dec {
        let Dec { mut m, mut scale } = self;
        while scale > 0 && m % 10 == 0 {
            m /= 10;
            scale -= 1;
        }
        Dec { m, scale }
    }

    /// The value as the nearest `f64`.
    pub fn to_f64(self) -> f64 {
        if self.scale == 0 {
            return self.m as f64;
        }
        // Both operands are exact when the mantissa is below 2^53 (and 10^scale, scale
        // <= 18, always is), so the division rounds once: the nearest f64.
        if self.m.unsigned_abs() < (1u64 << 53) {
            self.m as f64 / POW10[self.scale as usize] as f64
        } else {
            let mut buf = NumBuf::new();
            self.write(&mut buf).parse().unwrap_or(f64::NAN)
        }
    }

    /// Writes the normalized decimal text (`-12.5`, `1234`) into `buf`.
    pub fn write(self, buf: &mut NumBuf) -> &str {
        let d = self.normalize();
        buf.len = 0;
        let mut digits = [0u8; 20];
        let mut n = d.m.unsigned_abs();
        let mut k = 0;
        loop {
            digits[k] = b'0' + (n % 10) as u8;
            n /= 10;
            k += 1;
            if n == 0 {
                break;
            }
        }
        // Pad with zeros so there is at least one digit before the point.
        let scale = d.scale as usize;
        while k <= scale && scale > 0 {
            digits[k] = b'0';
            k += 1;
        }
        if d.m < 0 {
            buf.push(b'-');
        }
        for i in (0..k).rev() {
            buf.push(digits[i]);
            if i == scale && scale > 0 {
                buf.push(b'.');
            }
        }
        buf.as_str()
    }
}

/// A stack buffer for a number's text: long enough for any [`Dec`].
pub struct NumBuf {
    bytes: [u8; 48],
    len: usize,
}

impl NumBuf {
    /// An empty buffer.
    pub fn new() -> NumBuf {
        NumBuf {
            bytes: [0; 48],
            len: 0,
        }
    }

    fn push(&mut self, b: u8) {
        self.bytes[self.len] = b;
        self.len += 1;
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits, '-' and '.' are ever pushed.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl Default for NumBuf {
    fn default() -> Self {
        NumBuf::new()
    }
}

/// What went wrong in an operation on numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumError {
    /// `x / 0` or `x % 0`.
    DivisionByZero,
    /// A float too large for an integer (`int(1e30)`).
    OutOfRange,
}

impl Num {
    /// An integer.
    pub const fn int(i: i64) -> Num {
        Num::Dec(Dec { m: i, scale: 0 })
    }

    /// Parses a number as a user writes one in a cell or an expression: optional spaces,
    /// an optional sign, digits with an optional fraction, an optional exponent
    /// (`-12.50`, `1e3`, `.5`). Words such as `inf` or `nan`, and empty text, are not
    /// numbers.
    pub fn parse(s: &str) -> Option<Num> {
        // Most cells have no surrounding space: skip the (Unicode-aware) trim for them.
        let edges = |b: Option<&u8>| b.is_some_and(u8::is_ascii_graphic);
        let t = if edges(s.as_bytes().first()) && edges(s.as_bytes().last()) {
            s
        } else {
            s.trim()
        };
        let b = t.as_bytes();
        let mut i = 0;
        let neg = match b.first() {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        // Accumulate in a u64: its checked ops are single instructions, where i128's
        // checked multiply is a slow library call.
        let mut m: u64 = 0;
        let mut overflow = false;
        let mut digits = 0;
        let mut scale: i64 = 0;
        let mut push =
            |m: &mut u64, d: u8| match m.checked_mul(10).and_then(|x| x.checked_add(d as u64)) {
                Some(x) => *m = x,
                None => overflow = true,
            };
        while i < b.len() && b[i].is_ascii_digit() {
            push(&mut m, b[i] - b'0');
            digits += 1;
            i += 1;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                push(&mut m, b[i] - b'0');
                digits += 1;
                scale += 1;
                i += 1;
            }
        }
        if digits == 0 {
            return None;
        }
        if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            i += 1;
            let eneg = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let start = i;
            let mut e: i64 = 0;
            while i < b.len() && b[i].is_ascii_digit() {
                e = (e * 10 + (b[i] - b'0') as i64).min(100_000);
                i += 1;
            }
            if i == start {
                return None;
            }
            scale -= if eneg { -e } else { e };
        }
        if i != b.len() {
            return None;
        }
        let exact = if overflow {
            None
        } else {
            let m = if neg { -(m as i128) } else { m as i128 };
            if scale >= 0 {
                Dec::fit(m, scale.min(u32::MAX as i64) as u32)
            } else {
                pow10((-scale).min(64) as u32)
                    .and_then(|p| m.checked_mul(p))
                    .and_then(|m| Dec::fit(m, 0))
            }
        };
        match exact {
            Some(d) => Some(Num::Dec(d)),
            // Only digits, sign, point and exponent got here, which f64 parses.
            None => t.parse::<f64>().ok().map(Num::Float),
        }
    }

    /// The value as an `f64`.
    pub fn to_f64(self) -> f64 {
        match self {
            Num::Dec(d) => d.to_f64(),
            Num::Float(f) => f,
        }
    }

    /// True for zero.
    pub fn is_zero(self) -> bool {
        match self {
            Num::Dec(d) => d.m == 0,
            Num::Float(f) => f == 0.0,
        }
    }

    /// The integer value, when the number is a whole number that fits an `i64`.
    pub fn as_i64(self) -> Option<i64> {
        match self {
            Num::Dec(d) => {
                let d = d.normalize();
                (d.scale == 0).then_some(d.m)
            }
            Num::Float(f) => float_to_i64(f),
        }
    }

    /// Orders two numbers; `None` only when a float is NaN.
    fn order(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Dec(a), Num::Dec(b)) => {
                if a.scale == b.scale {
                    return Some(a.m.cmp(&b.m));
                }
                let s = a.scale.max(b.scale);
                // i64 * 10^18 fits an i128, so aligning is always exact.
                let x = a.m as i128 * POW10[(s - a.scale) as usize];
                let y = b.m as i128 * POW10[(s - b.scale) as usize];
                Some(x.cmp(&y))
            }
            (a, b) => a.to_f64().partial_cmp(&b.to_f64()),
        }
    }

    fn aligned(a: Dec, b: Dec) -> (i128, i128, u32) {
        let s = a.scale.max(b.scale);
        (
            a.m as i128 * POW10[(s - a.scale) as usize],
            b.m as i128 * POW10[(s - b.scale) as usize],
            s as u32,
        )
    }

    /// The result of an operation: exact and normalized when it fits, else `float()`.
    fn exact_or(m: Option<i128>, scale: u32, float: impl FnOnce() -> f64) -> Num {
        match m.and_then(|m| Dec::fit(m, scale)) {
            Some(d) => Num::Dec(d.normalize()),
            None => Num::Float(float()),
        }
    }

    /// `self + other`.
    fn plus(self, other: Num) -> Num {
        match (self, other) {
            (Num::Dec(a), Num::Dec(b)) => {
                let (x, y, s) = Num::aligned(a, b);
                Num::exact_or(x.checked_add(y), s, || a.to_f64() + b.to_f64())
            }
            (a, b) => Num::Float(a.to_f64() + b.to_f64()),
        }
    }

    /// `self - other`.
    fn minus(self, other: Num) -> Num {
        match (self, other) {
            (Num::Dec(a), Num::Dec(b)) => {
                let (x, y, s) = Num::aligned(a, b);
                Num::exact_or(x.checked_sub(y), s, || a.to_f64() - b.to_f64())
            }
            (a, b) => Num::Float(a.to_f64() - b.to_f64()),
        }
    }

    /// `self * other`.
    fn times(self, other: Num) -> Num {
        match (self, other) {
            // An i64 times an i64 always fits an i128.
            (Num::Dec(a), Num::Dec(b)) => Num::exact_or(
                Some(a.m as i128 * b.m as i128),
                a.scale as u32 + b.scale as u32,
                || a.to_f64() * b.to_f64(),
            ),
            (a, b) => Num::Float(a.to_f64() * b.to_f64()),
        }
    }

    /// `self / other`: exact when the quotient has a finite decimal expansion of at
    /// most [`MAX_SCALE`] digits, else the nearest `f64`.
    pub fn checked_div(self, other: Num) -> Result<Num, NumError> {
        if other.is_zero() {
            return Err(NumError::DivisionByZero);
        }
        if let (Num::Dec(a), Num::Dec(b)) = (self, other) {
            if let Some(q) = exact_div(a, b) {
                return Ok(Num::Dec(q));
            }
        }
        Ok(Num::Float(self.to_f64() / other.to_f64()))
    }

    /// `self % other`: the remainder of truncating division (its sign is the dividend's).
    pub fn checked_rem(self, other: Num) -> Result<Num, NumError> {
        if other.is_zero() {
            return Err(NumError::DivisionByZero);
        }
        Ok(match (self, other) {
            (Num::Dec(a), Num::Dec(b)) => {
                let (x, y, s) = Num::aligned(a, b);
                Num::exact_or(Some(x % y), s, || a.to_f64() % b.to_f64())
            }
            (a, b) => Num::Float(a.to_f64() % b.to_f64()),
        })
    }

    /// `-self`.
    fn negate(self) -> Num {
        match self {
            Num::Dec(d) => match d.m.checked_neg() {
                Some(m) => Num::Dec(Dec { m, scale: d.scale }),
                None => Num::Float(-d.to_f64()),
            },
            Num::Float(f) => Num::Float(-f),
        }
    }

    /// `|self|`.
    pub fn abs(self) -> Num {
        match self {
            Num::Dec(d) if d.m < 0 => -self,
            Num::Float(f) => Num::Float(f.abs()),
            n => n,
        }
    }

    /// The largest whole number not above `self`.
    pub fn floor(self) -> Num {
        match self {
            Num::Dec(d) if d.scale > 0 => Num::int(d.m.div_euclid(POW10[d.scale as usize] as i64)),
            Num::Float(f) => whole_float(f.floor()),
            n => n,
        }
    }

    /// The smallest whole number not below `self`.
    pub fn ceil(self) -> Num {
        -(-self).floor()
    }

    /// The whole part of `self` (rounding toward zero), as an integer.
    pub fn trunc(self) -> Result<i64, NumError> {
        match self {
            Num::Dec(d) => Ok(d.m / POW10[d.scale as usize] as i64),
            Num::Float(f) => float_to_i64(f.trunc()).ok_or(NumError::OutOfRange),
        }
    }

    /// Rounds to `digits` decimals (negative: to tens, hundreds, ...), halves away from
    /// zero. Floats are rounded as the decimal text they print as, so `2.675` rounds to
    /// `2.68` even though the nearest `f64` is a little below it.
    pub fn round(self, digits: i64) -> Num {
        let digits = digits.clamp(-(MAX_SCALE as i64), MAX_SCALE as i64);
        let d = match self {
            Num::Dec(d) => d,
            Num::Float(f) => {
                let text = pipe_sdk::format_f64(f);
                match Num::parse(&text) {
                    Some(Num::Dec(d)) => d,
                    _ => {
                        let p = 10f64.powi(digits as i32);
                        return Num::Float((f * p).round() / p);
                    }
                }
            }
        };
        let drop = d.scale as i64 - digits;
        if drop <= 0 {
            return Num::Dec(d);
        }
        // drop <= 36 here, and 10^36 fits an i128.
        let p = POW10[drop as usize];
        let m = d.m as i128;
        let mut q = m / p;
        if (m % p).abs() * 2 >= p {
            q += m.signum();
        }
        if digits >= 0 {
            Num::exact_or(Some(q), digits as u32, || self.to_f64())
        } else {
            Num::exact_or(q.checked_mul(POW10[(-digits) as usize]), 0, || {
                self.to_f64()
            })
        }
    }

    /// Writes the number's text into `buf` (floats as [`pipe_sdk::format_f64`]
    /// does; this one case allocates).
    pub fn write(self, buf: &mut NumBuf) -> std::borrow::Cow<'_, str> {
        match self {
            Num::Dec(d) => std::borrow::Cow::Borrowed(d.write(buf)),
            Num::Float(f) => std::borrow::Cow::Owned(pipe_sdk::format_f64(f)),
        }
    }
}

impl PartialEq for Num {
    fn eq(&self, other: &Num) -> bool {
        self.order(*other) == Some(Ordering::Equal)
    }
}

impl PartialOrd for Num {
    fn partial_cmp(&self, other: &Num) -> Option<Ordering> {
        self.order(*other)
    }
}

macro_rules! op {
    ($trait:ident, $method:ident, $via:ident) => {
        impl std::ops::$trait for Num {
            type Output = Num;
            fn $method(self, other: Num) -> Num {
                self.$via(other)
            }
        }
    };
}
op!(Add, add, plus);
op!(Sub, sub, minus);
op!(Mul, mul, times);

impl std::ops::Neg for Num {
    type Output = Num;
    fn neg(self) -> Num {
        self.negate()
    }
}

/// A whole float as an exact integer when it fits one.
fn whole_float(f: f64) -> Num {
    match float_to_i64(f) {
        Some(i) => Num::int(i),
        None => Num::Float(f),
    }
}

fn float_to_i64(f: f64) -> Option<i64> {
    // 2^63 is exactly representable; every whole f64 below it in magnitude fits an i64.
    const TWO_POW_63: f64 = (1u64 << 63) as f64;
    (f.fract() == 0.0 && f.abs() < TWO_POW_63).then_some(f as i64)
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `a / b` as an exact decimal, when the quotient has one of at most MAX_SCALE digits.
fn exact_div(a: Dec, b: Dec) -> Option<Dec> {
    // a / b = (a.m * 10^b.scale) / (b.m * 10^a.scale); both products fit an i128.
    let n = a.m as i128 * POW10[b.scale as usize];
    let d = b.m as i128 * POW10[a.scale as usize];
    if n % d == 0 {
        return Dec::fit(n / d, 0);
    }
    // n / d is a finite decimal exactly when d / gcd(n, d) has no prime factor other
    // than 2 and 5; it then needs max(twos, fives) decimals.
    let g = gcd(n.unsigned_abs(), d.unsigned_abs()) as i128;
    let (n, mut rest) = (n / g, d / g);
    let neg = rest < 0;
    rest = rest.abs();
    let (mut twos, mut fives) = (0u32, 0u32);
    while rest % 2 == 0 {
        rest /= 2;
        twos += 1;
    }
    while rest % 5 == 0 {
        rest /= 5;
        fives += 1;
    }
    let k = twos.max(fives);
    if rest != 1 || k > MAX_SCALE as u32 {
        return None;
    }
    let d_abs = (d / g).abs();
    let q = n.checked_mul(POW10[k as usize] / d_abs)?;
    Dec::fit(if neg { -q } else { q }, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Num {
        Num::parse(s).unwrap_or_else(|| panic!("{s} parses"))
    }

    fn text(x: Num) -> String {
        let mut buf = NumBuf::new();
        x.write(&mut buf).into_owned()
    }

    #[test]
    fn parses_what_users_write() {
        assert_eq!(n("12"), Num::int(12));
        assert_eq!(n(" -12.50 "), Num::Dec(Dec { m: -1250, scale: 2 }));
        assert_eq!(n("+.5"), Num::Dec(Dec { m: 5, scale: 1 }));
        assert_eq!(n("5."), Num::int(5));
        assert_eq!(n("1e3"), Num::int(1000));
        assert_eq!(n("1.5E-2"), Num::Dec(Dec { m: 15, scale: 3 }));
        assert_eq!(n("1e400"), Num::Float(f64::INFINITY));
        assert_eq!(n("0e-99999"), Num::int(0));
        assert!(matches!(n("1e-99999"), Num::Float(_)));
        assert!(matches!(n("123456789012345678901234"), Num::Float(_)));
        for bad in [
            "", " ", "-", ".", "abc", "inf", "NaN", "1e", "1,5", "0x10", "1 2", "--1",
        ] {
            assert_eq!(Num::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn money_stays_exact() {
        assert_eq!(text(n("12.34").times(n("100"))), "1234");
        assert_eq!(text(n("0.1").plus(n("0.2"))), "0.3");
        assert_eq!(text(n("19.99").times(n("3"))), "59.97");
        assert_eq!(text(n("1.10").minus(n("2.2"))), "-1.1");
        assert_eq!(text(n("0.05")), "0.05");
        assert_eq!(text(n("-0.5")), "-0.5");
        assert_eq!(text(n("7.5").checked_rem(n("2")).unwrap()), "1.5");
    }

    #[test]
    fn division_is_exact_when_the_quotient_is_finite() {
        assert_eq!(text(n("10").checked_div(n("4")).unwrap()), "2.5");
        assert_eq!(text(n("1234").checked_div(n("100")).unwrap()), "12.34");
        assert_eq!(text(n("-1").checked_div(n("8")).unwrap()), "-0.125");
        assert_eq!(text(n("6").checked_div(n("-3")).unwrap()), "-2");
        assert_eq!(text(n("0.3").checked_div(n("0.1")).unwrap()), "3");
        assert_eq!(n("1").checked_div(n("3")).unwrap(), Num::Float(1.0 / 3.0));
        assert_eq!(n("1").checked_div(n("0")), Err(NumError::DivisionByZero));
        assert_eq!(n("1").checked_rem(n("0.0")), Err(NumError::DivisionByZero));
    }

    #[test]
    fn overflow_falls_back_to_float() {
        let big = Num::int(i64::MAX);
        assert!(matches!(big.plus(Num::int(1)), Num::Float(_)));
        assert!(matches!(big.times(big), Num::Float(_)));
        assert!(matches!(Num::int(i64::MIN).negate(), Num::Float(_)));
        // Many decimals times many decimals: the exact result needs 20 digits.
        assert!(matches!(
            n("0.0000000001").times(n("0.0000000003")),
            Num::Float(_)
        ));
    }

    #[test]
    fn compares_across_scales_and_kinds() {
        assert_eq!(n("1.50").partial_cmp(&n("1.5")), Some(Ordering::Equal));
        assert_eq!(n("100").partial_cmp(&n("99.999")), Some(Ordering::Greater));
        assert_eq!(
            n("0.5").partial_cmp(&Num::Float(0.25)),
            Some(Ordering::Greater)
        );
    }

    #[test]
    fn rounding() {
        assert_eq!(text(n("2.675").round(2)), "2.68");
        assert_eq!(text(Num::Float(2.675).round(2)), "2.68");
        assert_eq!(text(n("-2.5").round(0)), "-3");
        assert_eq!(text(n("1234.5").round(-2)), "1200");
        assert_eq!(text(n("1.2").round(5)), "1.2");
        assert_eq!(text(n("-1.5").floor()), "-2");
        assert_eq!(text(n("-1.5").ceil()), "-1");
        assert_eq!(text(n("1.5").ceil()), "2");
        assert_eq!(text(Num::Float(2.5).floor()), "2");
        assert_eq!(n("-7.9").trunc(), Ok(-7));
        assert_eq!(Num::Float(1e30).trunc(), Err(NumError::OutOfRange));
    }

    #[test]
    fn to_f64_is_the_nearest() {
        assert_eq!(n("12.34").to_f64(), 12.34);
        assert_eq!(n("0.1").to_f64(), 0.1);
        assert_eq!(
            Dec {
                m: i64::MAX,
                scale: 18
            }
            .to_f64(),
            9.223_372_036_854_776
        );
    }
}
