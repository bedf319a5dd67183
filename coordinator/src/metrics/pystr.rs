//! Python `str` whitespace semantics, which differ from Rust's `char::is_whitespace` (Python also
//! counts the ASCII separators U+001C..U+001F). Used by jieba's `\s`, `str.split()` and
//! `str.rstrip()`.

/// `ch.isspace()` in Python 3 (the same set `\s` matches in a `str` regex).
pub fn is_py_space(ch: char) -> bool {
    ch.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&ch)
}

/// `s.split()` with no separator: runs of Python whitespace separate, empty pieces are dropped.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|piece| !piece.is_empty())
}

/// `s.rstrip()` with no argument.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_set() {
        // Exactly the 29 code points for which CPython 3.11's str.isspace() is true.
        let expected: Vec<u32> = [
            0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680,
        ]
        .into_iter()
        .chain(0x2000..=0x200a)
        .chain([0x2028, 0x2029, 0x202f, 0x205f, 0x3000])
        .collect();
        let got: Vec<u32> = (0..=0x10ffff)
            .filter_map(char::from_u32)
            .filter(|&c| is_py_space(c))
            .map(u32::from)
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn split_and_rstrip() {
        assert_eq!(
            py_split(" a\u{1f}b \n c\u{3000}").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(py_split(" \t ").count(), 0);
        assert_eq!(py_rstrip("x \n\u{85}"), "x");
    }
}
