//! `json.dumps`'s string literals (CPython's `Lib/json/encoder.py`, both the ASCII and the
//! pass-through encoder).

/// Appends `s` as a JSON string literal exactly as CPython's encoder escapes it.
///
/// Both modes escape `"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t` with short escapes and other
/// characters below U+0020 as lowercase `\u00XX`. With `ensure_ascii` every character outside
/// `' '..='~'` (so also DEL and all non-ASCII) becomes `\uXXXX`, non-BMP ones as a surrogate pair;
/// without it DEL, U+2028 and the like pass through unescaped.
pub fn push_json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => push_u_escape(out, c as u32),
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    push_u_escape(out, u32::from(*unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_u_escape(out: &mut String, unit: u32) {
    out.push_str(&format!("\\u{unit:04x}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(s: &str, ensure_ascii: bool) -> String {
        let mut out = String::new();
        push_json_string(&mut out, s, ensure_ascii);
        out
    }

    #[test]
    fn ascii_mode_escapes_non_bmp_as_surrogate_pair() {
        assert_eq!(
            quoted("😀\u{7f}\u{1f}", true),
            "\"\\ud83d\\ude00\\u007f\\u001f\""
        );
        assert_eq!(quoted("😀\u{7f}\u{2028}", false), "\"😀\u{7f}\u{2028}\"");
    }

    #[test]
    fn short_escapes_in_both_modes() {
        for ascii in [true, false] {
            assert_eq!(
                quoted("a\"b\\c\nd\re\tf\u{8}g\u{c}h é", ascii),
                if ascii {
                    "\"a\\\"b\\\\c\\nd\\re\\tf\\bg\\fh \\u00e9\""
                } else {
                    "\"a\\\"b\\\\c\\nd\\re\\tf\\bg\\fh é\""
                }
            );
        }
    }
}
