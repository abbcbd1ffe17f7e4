//! The fast path for the commonest `:predict` body, `{"instances": [[x, …], …]}` of plain
//! numbers for a model without preprocessing: one pass over the bytes straight into `f32`
//! rows, no serde machinery per element.
//!
//! It only ever *accepts*: anything it does not expect (another key, a string, a wrong
//! length, a syntax error, a non-finite value, an empty list) makes it give up, and the full
//! decoder in [`super::decode`] runs from the start — so every error message is the full
//! decoder's, as precise as before. Values are the full decoder's too: numbers are read as
//! `f64` (exactly, like serde_json: Clinger's fast path for ≤ 19 digits and |exponent| ≤ 22,
//! the standard library's correctly rounded parser otherwise), then narrowed to `f32`.

/// `(rows, n_rows)` when `body` is `{"instances": [...]}` with every instance a nested array
/// of exactly `shape` of finite numbers; `None` to let the full decoder answer.
pub(crate) fn instances(body: &[u8], shape: &[usize]) -> Option<(Vec<f32>, usize)> {
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
            let x = self.number()? as f32;
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

    /// A JSON number, strictly by the grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<f64> {
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
        // More than 19 significant digits do not fit: the exact parser takes over.
        let mut exact = true;
        let digit = |d: u8, mantissa: &mut u64, exact: &mut bool| {
            match mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(u64::from(d - b'0')))
            {
                Some(m) => *mantissa = m,
                None => *exact = false,
            }
        };
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while let Some(&d @ b'0'..=b'9') = b.get(i) {
                    digit(d, &mut mantissa, &mut exact);
                    i += 1;
                }
            }
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            let first = i;
            while let Some(&d @ b'0'..=b'9') = b.get(i) {
                digit(d, &mut mantissa, &mut exact);
                exp10 -= 1;
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
        // Clinger: the mantissa and the power of ten are exact doubles, so one IEEE
        // multiplication or division rounds correctly.
        if exact && mantissa <= 1 << 53 && (-22..=22).contains(&exp10) {
            let m = mantissa as f64;
            let pow = POW10[exp10.unsigned_abs() as usize];
            let x = if exp10 >= 0 { m * pow } else { m / pow };
            return Some(if negative { -x } else { x });
        }
        std::str::from_utf8(&b[start..i]).ok()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::instances;

    #[test]
    fn reads_the_common_body() {
        let (rows, n) = instances(br#" { "instances" : [ [1, -2.5, 3e2], [0.125,1E-3 , -0] ] } "#, &[3]).unwrap();
        assert_eq!(n, 2);
        assert_eq!(rows, vec![1.0, -2.5, 300.0, 0.125, 0.001, -0.0]);
        let (rows, n) = instances(br#"{"instances":[[[1,2],[3,4]]]}"#, &[2, 2]).unwrap();
        assert_eq!((rows, n), (vec![1.0, 2.0, 3.0, 4.0], 1));
    }

    #[test]
    fn numbers_equal_the_standard_parser() {
        for s in [
            "0.1", "123456789012345678", "1.7976931348623157e308", "4.9e-324", "0.30000000000000004",
            "123456789012345678901234567890", "1e22", "1e23", "9007199254740993", "-0.0000001234",
            "3.4028235e38", "2.5e-45", "1e-400",
        ] {
            let body = format!(r#"{{"instances": [[{s}]]}}"#);
            let want = s.parse::<f64>().unwrap() as f32;
            match instances(body.as_bytes(), &[1]) {
                Some((rows, 1)) => assert_eq!(rows[0].to_bits(), want.to_bits(), "{s}"),
                other => assert!(!want.is_finite(), "{s}: {other:?}"),
            }
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
            assert!(instances(body.as_bytes(), &[3]).is_none(), "{body}");
        }
    }
}
