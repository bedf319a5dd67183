//! Python's `repr(float)`, which is also how `json.dumps` writes a float.
//!
//! Python prints the shortest digit string that reads back to the same double (David Gay's
//! `dtoa` mode 0); Rust's `{:e}` formatting produces the same shortest digits, so only the layout
//! differs: Python switches to scientific notation when the decimal exponent is below -4 or at
//! least 16, writes at least two exponent digits with a sign (`1e-05`, `1.5e+16`), and always
//! keeps a `.0` on integral values in positional notation (`100.0`).

/// `repr(x)` as Python 3 writes it (`nan`, `inf`, `-inf` for the non-finite values).
pub fn float_repr(x: f64) -> String {
    spell(x, ["nan", "inf", "-inf"])
}

/// A float as `json.dumps` writes it: `repr`, except `NaN`, `Infinity` and `-Infinity` for the
/// non-finite values (Python's default `allow_nan=True`).
pub fn json_float(x: f64) -> String {
    spell(x, ["NaN", "Infinity", "-Infinity"])
}

/// `x` laid out as Python does, the non-finite values by the given names of NaN, +inf and -inf.
fn spell(x: f64, [nan, inf, minus_inf]: [&str; 3]) -> String {
    if x.is_nan() {
        nan.to_owned()
    } else if x.is_infinite() {
        if x > 0.0 { inf } else { minus_inf }.to_owned()
    } else {
        layout_finite(x)
    }
}

/// Lays out the shortest round-trip digits of a finite `x` the way `float_repr_style == 'short'`
/// does in CPython (`Python/pystrtod.c`, mode `'r'`).
fn layout_finite(x: f64) -> String {
    // `{:e}` gives e.g. "-1.2345e-5", "1e16", "0e0": shortest digits, one before the point.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };

    let body = if !(-4..16).contains(&exp) {
        scientific(&digits, exp)
    } else if exp < 0 {
        // 0.000ddd: (-exp - 1) zeros between the point and the first digit.
        format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
    } else {
        positional(&digits, exp as usize)
    };
    format!("{sign}{body}")
}

/// `d.ddde+XX`: no `.0` on a single digit, two exponent digits at least.
fn scientific(digits: &str, exp: i32) -> String {
    let (first, rest) = digits.split_at(1);
    let point = if rest.is_empty() {
        String::new()
    } else {
        format!(".{rest}")
    };
    let exp_sign = if exp < 0 { '-' } else { '+' };
    format!("{first}{point}e{exp_sign}{:02}", exp.unsigned_abs())
}

/// Digits with the point after `exp + 1` of them, padded with zeros and a `.0` when integral.
fn positional(digits: &str, exp: usize) -> String {
    let int_len = exp + 1;
    if digits.len() <= int_len {
        format!("{digits}{}.0", "0".repeat(int_len - digits.len()))
    } else {
        let (int_part, frac) = digits.split_at(int_len);
        format!("{int_part}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_python_examples() {
        let cases = [
            (100.0, "100.0"),
            (0.76, "0.76"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1.5e16, "1.5e+16"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (-2.5, "-2.5"),
            (3.9457, "3.9457"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.5e-7, "1.5e-07"),
            (1e22, "1e+22"),
            (123456789.125, "123456789.125"),
        ];
        for (x, want) in cases {
            assert_eq!(float_repr(x), want, "repr of {x:e}");
        }
    }

    #[test]
    fn non_finite_values() {
        assert_eq!(float_repr(f64::NAN), "nan");
        assert_eq!(float_repr(f64::NEG_INFINITY), "-inf");
        assert_eq!(json_float(f64::NAN), "NaN");
        assert_eq!(json_float(f64::INFINITY), "Infinity");
        assert_eq!(json_float(f64::NEG_INFINITY), "-Infinity");
    }
}
