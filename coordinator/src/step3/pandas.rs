//! The text a CSV cell becomes on its way through LF's task scripts: `pd.read_csv` type inference
//! per column (pandas 2.1, C parser, default `na_values`), `df.to_dict(orient="records")`, then HF
//! `datasets` (2.16) storing the Python value in a `string` feature, which is `str(value)`.
//!
//! Measured with the real packages (scripts/goldens/step3_goldens.py, fixture
//! `step3_cells.json`), per column of one file:
//! - NA cells (exactly one of pandas' default `na_values`, `""` included) become `nan`.
//! - Every non-NA cell an integer (`str_to_int64`: spaces, sign, digits, spaces) and no NA:
//!   int64, the digits (`"+5"` → `5`, `"007"` → `7`). After an int64 overflow: uint64 if every
//!   cell fits and none is NA or negative, floats if a cell is no integer, else the raw text.
//! - Else every non-NA cell a float (pandas' `precise_xstrtod`, not correctly rounded beyond
//!   17 digits; `inf`/`infinity` spellings): Python `repr` (`"0.80"` → `0.8`, `"5"` → `5.0`).
//! - Else every non-NA cell `True`/`TRUE`/`true`/`False`/`FALSE`/`false` → `True` / `False`.
//! - Else the cells as written (NA → `nan`).
//!
//! In the three benchmarks only the twelve MMLU cells `None` change (to `nan`): every numeric
//! looking cell sits in a column with text. pandas 3.x parses floats correctly rounded and reads
//! `1e400` as `inf`; neither case occurs in the benchmarks, so their prompts are the same there.

use crate::output::float_repr;

/// pandas' default `na_values` (`pandas._libs.parsers.STR_NA_VALUES`, pandas 2.1).
const NA_VALUES: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

fn is_na(cell: &str) -> bool {
    NA_VALUES.contains(&cell)
}

/// C `isspace` in the "C" locale, as pandas' tokenizer helpers use it.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

enum IntError {
    Invalid,
    Overflow,
}

/// pandas `str_to_int64` (no thousands separator): the value as an i128 within `[lo, hi]`.
fn parse_int(cell: &str, lo: i128, hi: i128) -> Result<i128, IntError> {
    let b = cell.as_bytes();
    let mut p = 0;
    while p < b.len() && is_space(b[p]) {
        p += 1;
    }
    let negative = b.get(p) == Some(&b'-');
    if matches!(b.get(p), Some(b'-' | b'+')) {
        p += 1;
    }
    if !b.get(p).is_some_and(u8::is_ascii_digit) {
        return Err(IntError::Invalid);
    }
    let mut value: i128 = 0;
    while p < b.len() && b[p].is_ascii_digit() {
        let d = (b[p] - b'0') as i128;
        value = value * 10 + if negative { -d } else { d };
        if value < lo || value > hi {
            return Err(IntError::Overflow);
        }
        p += 1;
    }
    while p < b.len() && is_space(b[p]) {
        p += 1;
    }
    if p < b.len() {
        return Err(IntError::Invalid);
    }
    Ok(value)
}

/// `10^k` as the C literal `1ek` (correctly rounded), for `0 <= k <= 308`.
fn pow10(k: i32) -> f64 {
    format!("1e{k}").parse().unwrap_or(f64::INFINITY)
}

/// pandas' `precise_xstrtod` (decimal `.`, exponent `e`/`E`, trailing spaces skipped): at most 17
/// significant digits accumulated in a double, then one multiply or divide by a power of ten. None
/// where pandas reports an error or leaves characters unread.
fn precise_xstrtod(cell: &str) -> Option<f64> {
    const MAX_DIGITS: i32 = 17;
    let b = cell.as_bytes();
    let mut p = 0;
    while p < b.len() && is_space(b[p]) {
        p += 1;
    }
    let negative = b.get(p) == Some(&b'-');
    if matches!(b.get(p), Some(b'-' | b'+')) {
        p += 1;
    }
    let (mut number, mut exponent, mut digits) = (0f64, 0i32, 0i32);
    while p < b.len() && b[p].is_ascii_digit() {
        if digits < MAX_DIGITS {
            number = number * 10.0 + (b[p] - b'0') as f64;
            digits += 1;
        } else {
            exponent += 1;
        }
        p += 1;
    }
    if b.get(p) == Some(&b'.') {
        p += 1;
        let mut decimals = 0;
        while digits < MAX_DIGITS && p < b.len() && b[p].is_ascii_digit() {
            number = number * 10.0 + (b[p] - b'0') as f64;
            p += 1;
            digits += 1;
            decimals += 1;
        }
        while p < b.len() && b[p].is_ascii_digit() {
            p += 1;
        }
        exponent -= decimals;
    }
    if digits == 0 {
        return None;
    }
    if negative {
        number = -number;
    }
    if matches!(b.get(p), Some(b'e' | b'E')) {
        p += 1;
        let exp_negative = b.get(p) == Some(&b'-');
        if matches!(b.get(p), Some(b'-' | b'+')) {
            p += 1;
        }
        let (mut n, mut exp_digits) = (0i64, 0);
        while exp_digits < MAX_DIGITS && p < b.len() && b[p].is_ascii_digit() {
            n = n * 10 + (b[p] - b'0') as i64;
            exp_digits += 1;
            p += 1;
        }
        let n = n.clamp(-100_000, 100_000) as i32;
        exponent += if exp_negative { -n } else { n };
        if exp_digits == 0 {
            // pandas steps back one character, which leaves the `e` (or its sign) unread.
            p -= 1;
        }
    }
    if exponent > 308 {
        return None;
    }
    if exponent > 0 {
        number *= pow10(exponent);
    } else if exponent < -308 {
        if exponent < -616 {
            number = 0.0;
        } else {
            number /= pow10(-308 - exponent);
            number /= pow10(308);
        }
    } else {
        number /= pow10(-exponent);
    }
    if number.is_infinite() {
        return None;
    }
    while p < b.len() && is_space(b[p]) {
        p += 1;
    }
    (p == b.len()).then_some(number)
}

/// A float cell as pandas' `_try_double` reads it, including its spellings of infinity.
fn parse_double(cell: &str) -> Option<f64> {
    precise_xstrtod(cell).or_else(|| match cell.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    })
}

fn parse_bool(cell: &str) -> Option<bool> {
    match cell {
        "True" | "TRUE" | "true" => Some(true),
        "False" | "FALSE" | "false" => Some(false),
        _ => None,
    }
}

/// Python `str(float)`.
fn py_float(x: f64) -> String {
    if x.is_nan() {
        "nan".to_owned()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else {
        float_repr(x)
    }
}

/// What the cells of one column (all rows of one file) read as once stored by `datasets`.
pub fn render_column(cells: &[&str]) -> Vec<String> {
    let values: Vec<Option<&str>> = cells.iter().map(|c| (!is_na(c)).then_some(*c)).collect();
    if let Some(out) = try_integers(cells, &values) {
        return out;
    }
    let floats: Option<Vec<f64>> = values
        .iter()
        .map(|v| v.map_or(Some(f64::NAN), parse_double))
        .collect();
    if let Some(floats) = floats {
        return floats.into_iter().map(py_float).collect();
    }
    let bools: Option<Vec<Option<bool>>> = values
        .iter()
        .map(|v| v.map_or(Some(None), |c| parse_bool(c).map(Some)))
        .collect();
    if let Some(bools) = bools {
        let word = |b: Option<bool>| match b {
            Some(true) => "True",
            Some(false) => "False",
            None => "nan",
        };
        return bools.into_iter().map(|b| word(b).to_owned()).collect();
    }
    values
        .iter()
        .map(|v| v.unwrap_or("nan").to_owned())
        .collect()
}

/// pandas' `_try_int64` (and `_try_uint64` after an overflow). None: not an integer column, so
/// pandas tries floats next.
fn try_integers(cells: &[&str], values: &[Option<&str>]) -> Option<Vec<String>> {
    let mut ints = Vec::with_capacity(values.len());
    for v in values {
        // An NA cell ends the int64 attempt (an int64 column cannot hold it); floats come next.
        let cell = (*v)?;
        match parse_int(cell, i64::MIN as i128, i64::MAX as i128) {
            Ok(i) => ints.push(i),
            Err(IntError::Invalid) => return None,
            Err(IntError::Overflow) => return try_uint64(cells, values),
        }
    }
    Some(ints.iter().map(i128::to_string).collect())
}

/// pandas' uint64 attempt after an int64 overflow. A cell that is no integer sends the column on
/// to floats (None); a cell beyond u64, an NA cell or a negative one makes pandas fall back to an
/// object column of every cell's raw text, NA included (measured: `["18446744073709551615", ""]`
/// stays as written).
fn try_uint64(cells: &[&str], values: &[Option<&str>]) -> Option<Vec<String>> {
    let raw = || Some(cells.iter().map(|c| (*c).to_owned()).collect());
    let mut ints = Vec::with_capacity(values.len());
    let mut fallback = false;
    for v in values {
        let Some(cell) = v else {
            fallback = true;
            continue;
        };
        match parse_int(cell, i64::MIN as i128, u64::MAX as i128) {
            Ok(i) if i < 0 => fallback = true,
            Ok(i) => ints.push(i),
            Err(IntError::Invalid) => return None,
            Err(IntError::Overflow) => return raw(),
        }
    }
    if fallback {
        return raw();
    }
    Some(ints.iter().map(i128::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(cells: &[&str]) -> Vec<String> {
        render_column(cells)
    }

    /// Each case was run through pandas 2.1.4 + datasets 2.16.0 (see the module header).
    #[test]
    fn measured_cases() {
        assert_eq!(col(&["007", "+5", " 3 ", "-0"]), ["7", "5", "3", "0"]);
        assert_eq!(
            col(&["0.80", "5", "1e3", ""]),
            ["0.8", "5.0", "1000.0", "nan"]
        );
        assert_eq!(
            col(&["5.", ".5", "1E5", "1e-400"]),
            ["5.0", "0.5", "100000.0", "0.0"]
        );
        assert_eq!(col(&["inf", "-Infinity", "+inf"]), ["inf", "-inf", "inf"]);
        assert_eq!(
            col(&[
                "0.1000000000000000055511151231257827",
                "3.14159265358979323846264338"
            ]),
            ["0.1", "3.1415926535897927"]
        );
        assert_eq!(
            col(&["12345678901234567890.5", "0.12345678901234567"]),
            ["1.2345678901234567e+19", "0.1234567890123456"]
        );
        assert_eq!(
            col(&["1.5", "99999999999999999999"]),
            ["1.5", "1.0000000000000002e+20"]
        );
        assert_eq!(
            col(&["99999999999999999999", "1.5"]),
            ["99999999999999999999", "1.5"]
        );
        assert_eq!(
            col(&["18446744073709551615", "1"]),
            ["18446744073709551615", "1"]
        );
        assert_eq!(
            col(&["18446744073709551615", ""]),
            ["18446744073709551615", ""]
        );
        assert_eq!(
            col(&["-1", "18446744073709551615"]),
            ["-1", "18446744073709551615"]
        );
        assert_eq!(col(&["1e400", "1"]), ["1e400", "1"]);
        assert_eq!(col(&["1e", "1"]), ["1e", "1"]);
        assert_eq!(col(&["true", "", "FALSE"]), ["True", "nan", "False"]);
        assert_eq!(col(&["True", "1"]), ["True", "1"]);
        assert_eq!(
            col(&["None", "text", " NA", " inf"]),
            ["nan", "text", " NA", " inf"]
        );
        assert_eq!(col(&["\u{a0}5", "５"]), ["\u{a0}5", "５"]);
    }
}
