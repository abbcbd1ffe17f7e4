//! The fast path for the commonest `:predict` body, `{"instances": [[x, …], …]}` of plain
//! numbers for a model without preprocessing: one pass over the bytes straight into `f32`
//! rows, no serde machinery per element.
//!
//! It only ever *accepts*: anything it does not expect (another key, a string, a wrong
//! length, a syntax error, a non-finite value, an empty list) makes it give up, and the full
//! decoder in [`super::decode`] runs from the start — so every error message is the full
//! decoder's, as precise as before. Each number becomes the `f32` nearest to its decimal
//! value (see [`Parser::number`]). The full decoder reads an `f64` (serde_json) and narrows
//! it; the two agree except for a value within about an `f64` ulp of an `f32` rounding
//! boundary, where the narrowing rounds twice and this path does not.

/// `(rows, n_rows)` when `body` is `{"instances": [...]}` with every instance a nested array
/// of exactly `shape` of finite numbers, and at most `max_rows` of them; `None` to let the
/// full decoder answer (it also counts and refuses instances past the limit: the row limit
/// has one check, the full decoder's).
pub(crate) fn instances(
    body: &[u8],
    shape: &[usize],
    max_rows: usize,
) -> Option<(Vec<f32>, usize)> {
    let mut p = Parser { b: body, i: 0 };
    p.expect(b'{')?;
    p.expect_key(b"instances")?;
    p.expect(b'[')?;
    let row_len: usize = shape.iter().product();
    // A guess that avoids most regrowth: about 6 bytes per number as clients write them.
    let mut rows = Vec::with_capacity((body.len() / 6).min(1 << 24));
    let mut n_rows = 0;
    if p.peek()? == b']' {
        return None; // empty: the full decoder says so
    }
    loop {
        if n_rows == max_rows {
            return None;
        }
        let before = rows.len();
        p.tensor(shape, &mut rows)?;
        debug_assert_eq!(rows.len() - before, row_len);
        n_rows += 1;
        match p.next()? {
            b',' => {}
            b']' => break,
            _ => return None,
        }
    }
    p.expect(b'}')?;
    p.skip_ws();
    (p.i == body.len()).then_some((rows, n_rows))
}

struct Parser<'b> {
    b: &'b [u8],
    i: usize,
}

/// Exact powers of ten as `f64` (10^0 … 10^22).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.b.get(self.i).copied()
    }

    /// The next byte after whitespace, consumed.
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// `"key"` followed by `:` (no escapes: a key with one is left to the full decoder).
    fn expect_key(&mut self, key: &[u8]) -> Option<()> {
        self.expect(b'"')?;
        let end = self.i + key.len();
        if self.b.get(self.i..end)? != key || self.b.get(end) != Some(&b'"') {
            return None;
        }
        self.i = end + 1;
        self.expect(b':')
    }

    /// One nested array of exactly `shape`, appended to `out` in row-major order.
    fn tensor(&mut self, shape: &[usize], out: &mut Vec<f32>) -> Option<()> {
        let Some((&n, inner)) = shape.split_first() else {
            let x = self.number()?;
            if !x.is_finite() {
                return None;
            }
            out.push(x);
            return Some(());
        };
        self.expect(b'[')?;
        for k in 0..n {
            if k > 0 {
                self.expect(b',')?;
            }
            self.tensor(inner, out)?;
        }
        self.expect(b']')
    }

    /// A JSON number, strictly by the grammar (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`),
    /// as the `f32` nearest to its decimal value.
    ///
    /// The first 19 significant digits become a `u64` mantissa and the rest only move the
    /// decimal exponent, so a 17-digit number (what clients holding `float64` send) costs one
    /// pass and two floating-point operations: `mantissa × 10^exp` in `f64` is then within a
    /// few `f64` ulps of the exact value, and its rounding to `f32` is the exact value's
    /// unless the approximation lies within that error of an `f32` rounding boundary. That
    /// happens for about one number in ten million; those, and exponents out of range, take
    /// the standard library's correctly rounded parser.
    fn number(&mut self) -> Option<f32> {
        self.skip_ws();
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let negative = b.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        let mut mantissa: u64 = 0;
        let mut exp10: i64 = 0;
        // Below 10^18 another digit always fits in a u64.
        const ROOM: u64 = 1_000_000_000_000_000_000;
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while let Some(&d @ b'0'..=b'9') = b.get(i) {
                    if mantissa < ROOM {
                        mantissa = mantissa * 10 + u64::from(d - b'0');
                    } else {
                        exp10 += 1; // a dropped integer digit still scales the value
                    }
                    i += 1;
                }
            }
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            let first = i;
            while let Some(&d @ b'0'..=b'9') = b.get(i) {
                if mantissa < ROOM {
                    mantissa = mantissa * 10 + u64::from(d - b'0');
                    exp10 -= 1;
                }
                i += 1;
            }
            if i == first {
                return None;
            }
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            let negative_exp = match b.get(i) {
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
            let first = i;
            let mut e: i64 = 0;
            while let Some(&d @ b'0'..=b'9') = b.get(i) {
                e = (e * 10 + i64::from(d - b'0')).min(1 << 40);
                i += 1;
            }
            if i == first {
                return None;
            }
            exp10 += if negative_exp { -e } else { e };
        }
        self.i = i;
        if mantissa == 0 {
            return Some(if negative { -0.0 } else { 0.0 });
        }
        let exact = || std::str::from_utf8(&b[start..i]).ok()?.parse::<f32>().ok();
        // At most three roundings of 2^-53 each, and under 10^-18 from dropped digits.
        let m = mantissa as f64;
        let w = match exp10 {
            0..=22 => m * POW10[exp10 as usize],
            -22..=-1 => m / POW10[exp10.unsigned_abs() as usize],
            23..=44 => m * 1e22 * POW10[exp10 as usize - 22],
            -44..=-23 => m / 1e22 / POW10[exp10.unsigned_abs() as usize - 22],
            _ => return exact(),
        };
        if w < f64::from(f32::MIN_POSITIVE) {
            return exact(); // f32 subnormals round at another bit
        }
        // An f32 keeps the top 23 of an f64's 52 fraction bits: the 29 dropped bits say how
        // far `w` is from the midpoint between two f32s, in f64 ulps.
        const DROPPED: u64 = (1 << 29) - 1;
        const MARGIN: u64 = 64;
        if (w.to_bits() & DROPPED).abs_diff(1 << 28) <= MARGIN {
            return exact();
        }
        let x = w as f32;
        Some(if negative { -x } else { x })
    }
}

#[cfg(test)]
mod tests {
    use super::instances;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    #[test]
    fn reads_the_common_body() {
        let (rows, n) = instances(
            br#" { "instances" : [ [1, -2.5, 3e2], [0.125,1E-3 , -0] ] } "#,
            &[3],
            2,
        )
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(rows, vec![1.0, -2.5, 300.0, 0.125, 0.001, -0.0]);
        let (rows, n) = instances(br#"{"instances":[[[1,2],[3,4]]]}"#, &[2, 2], 1).unwrap();
        assert_eq!((rows, n), (vec![1.0, 2.0, 3.0, 4.0], 1));
    }

    /// The f32 a body's single number reads as, if the fast path takes it.
    fn read(s: &str) -> Option<f32> {
        let body = format!(r#"{{"instances": [[{s}]]}}"#);
        instances(body.as_bytes(), &[1], 1).map(|(rows, _)| rows[0])
    }

    /// The fast path either gives up (only on non-finite values) or reads exactly the f32
    /// the standard library's correctly rounded parser reads.
    fn check(s: &str) -> Result<(), TestCaseError> {
        let want: f32 = s.parse().unwrap();
        match read(s) {
            Some(x) => prop_assert_eq!(x.to_bits(), want.to_bits(), "{}", s),
            None => prop_assert!(!want.is_finite(), "{} gave up", s),
        }
        Ok(())
    }

    #[test]
    fn numbers_equal_the_standard_parser() {
        for s in [
            "0.1",
            "123456789012345678",
            "1.7976931348623157e308",
            "4.9e-324",
            "0.30000000000000004",
            "123456789012345678901234567890",
            "1e22",
            "1e23",
            "9007199254740993",
            "-0.0000001234",
            "3.4028235e38",
            "3.4028236e38",
            "2.5e-45",
            "1e-400",
            "1.1754944e-38",
            "1.1754942e-38",
            "-0.7234567403793335",
            "0.000000000000000000000000000000012345678901234567",
            "1.2345678901234567e-30",
            "98765432109876543210987654321e-40",
            "0",
            "-0",
            "0.0e5",
            // 1 + 2^-24 is the midpoint between 1 and the next f32: ties go to even (1), and
            // anything above it, however little, rounds up.
            "1.000000059604644775390625",
            "1.0000000596046447753906251",
            "1.0000000596046447753906249",
            "1.00000005960464477539062500000000000001",
        ] {
            check(s).unwrap();
        }
        assert_eq!(read("-0").unwrap().to_bits(), (-0.0f32).to_bits());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Numbers as clients print them (shortest round-trip f64 and f32, fixed and
        /// exponent notation).
        #[test]
        fn any_printed_number(x in any::<f64>(), y in any::<f32>()) {
            for s in [format!("{x:?}"), format!("{x:e}"), format!("{y:?}"), format!("{y:e}"), format!("{:e}", f64::from(y))] {
                if !s.contains("inf") && !s.contains("NaN") {
                    check(&s.replace("e", "E"))?;
                    check(&s)?;
                }
            }
        }

        /// Decimals within a few f64 ulps of a midpoint between two f32s, where reading the
        /// value through an f64 first would round twice.
        #[test]
        fn numbers_next_to_an_f32_midpoint(bits in 0x0080_0000u32..0x7f7f_ffff, k in -300i64..300, neg in any::<bool>()) {
            let lo = f64::from(f32::from_bits(bits));
            let hi = f64::from(f32::from_bits(bits + 1));
            let mid = (lo + hi) / 2.0;
            let near = f64::from_bits((mid.to_bits() as i64 + k) as u64);
            let sign = if neg { "-" } else { "" };
            check(&format!("{sign}{near:e}"))?;
            check(&format!("{sign}{near:.40e}"))?;
        }
    }

    #[test]
    fn gives_up_on_anything_else() {
        for body in [
            r#"{"instances": []}"#,
            r#"{"instances": [[1, 2]]}"#,
            r#"{"instances": [[1, 2, 3, 4]]}"#,
            r#"{"instances": [[1, 2, "3"]]}"#,
            r#"{"instances": [[1, 2, 3],]}"#,
            r#"{"instances": [[1, 2, 3]], "signature_name": "x"}"#,
            r#"{"inputs": [[1, 2, 3]]}"#,
            r#"{"instances": [[1, 2, 01]]}"#,
            r#"{"instances": [[1, 2, 1.]]}"#,
            r#"{"instances": [[1, 2, .5]]}"#,
            r#"{"instances": [[1, 2, 1e]]}"#,
            r#"{"instances": [[1, 2, +1]]}"#,
            r#"{"instances": [[1, 2, NaN]]}"#,
            r#"{"instances": [[1, 2, 1e39]]}"#,
            r#"{"instances": [{"a": 1}]}"#,
            r#"{"instances": [[1, 2, 3]]} x"#,
            r#"{"instances": [[1, 2, 3]]"#,
            r#"{"instan\u0063es": [[1, 2, 3]]}"#,
        ] {
            assert!(instances(body.as_bytes(), &[3], 10).is_none(), "{body}");
        }
        // More instances than the limit: the full decoder counts and refuses them.
        assert!(instances(br#"{"instances": [[1, 2, 3], [4, 5, 6]]}"#, &[3], 1).is_none());
    }
}
