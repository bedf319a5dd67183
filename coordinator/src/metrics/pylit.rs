//! A reader for the Python dict literals jieba ships its HMM tables in (`finalseg/prob_*.py`:
//! `P={'B': {'\u4e00': -3.65, ...}, ...}`): nested dicts with string keys and float values.

/// A parsed value: a float or a dict that keeps the file's key order.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// A number literal.
    Num(f64),
    /// A `{key: value, ...}` literal.
    Dict(Vec<(String, PyValue)>),
}

/// Parses the first `{...}` literal of `source` (everything before it, like the `P=` assignment and
/// the `__future__` import, is skipped). The error says what was expected and at which line.
pub fn parse_first_dict(source: &str) -> Result<PyValue, String> {
    let start = source.find('{').ok_or("no '{' found")?;
    let mut parser = Parser {
        src: source,
        pos: start,
    };
    parser.value()
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> String {
        let line = self.src[..self.pos].matches('\n').count() + 1;
        format!("line {line}: expected {what}")
    }

    fn skip_space(&mut self) {
        let rest = &self.src[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_space();
        self.src[self.pos..].chars().next()
    }

    fn expect(&mut self, ch: char) -> Result<(), String> {
        if self.peek() == Some(ch) {
            self.pos += ch.len_utf8();
            Ok(())
        } else {
            Err(self.error(&format!("'{ch}'")))
        }
    }

    fn value(&mut self) -> Result<PyValue, String> {
        match self.peek() {
            Some('{') => self.dict(),
            Some(c) if c == '-' || c == '+' || c == '.' || c.is_ascii_digit() => self.number(),
            _ => Err(self.error("a dict or a number")),
        }
    }

    fn dict(&mut self) -> Result<PyValue, String> {
        self.expect('{')?;
        let mut entries = Vec::new();
        loop {
            if self.peek() == Some('}') {
                self.pos += 1;
                return Ok(PyValue::Dict(entries));
            }
            let key = self.string()?;
            self.expect(':')?;
            let value = self.value()?;
            entries.push((key, value));
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {}
                _ => return Err(self.error("',' or '}'")),
            }
        }
    }

    fn number(&mut self) -> Result<PyValue, String> {
        let rest = &self.src[self.pos..];
        let len = rest
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E')))
            .unwrap_or(rest.len());
        let value = rest[..len]
            .parse::<f64>()
            .map_err(|_| self.error("a float literal"))?;
        self.pos += len;
        Ok(PyValue::Num(value))
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = match self.peek() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.error("a string key")),
        };
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.src[self.pos..].char_indices();
        while let Some((i, c)) = chars.next() {
            if c == quote {
                self.pos += i + 1;
                return Ok(out);
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let (_, esc) = chars.next().ok_or_else(|| self.error("an escape"))?;
            let hex_len = match esc {
                'x' => 2,
                'u' => 4,
                'U' => 8,
                _ => {
                    out.push(match esc {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '0' => '\0',
                        other => other,
                    });
                    continue;
                }
            };
            let hex: String = (0..hex_len)
                .filter_map(|_| chars.next().map(|(_, h)| h))
                .collect();
            let code = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
            out.push(code.ok_or_else(|| self.error("a hex escape"))?);
        }
        Err(self.error("a closing quote"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_dicts() {
        let src = "from __future__ import unicode_literals\n\nP={'B': {'\\u4e00': -3.65, 'x': 1e+2},\n 'E': -3.14e+100}\n";
        let parsed = parse_first_dict(src).unwrap();
        let expected = PyValue::Dict(vec![
            (
                "B".into(),
                PyValue::Dict(vec![
                    ("一".into(), PyValue::Num(-3.65)),
                    ("x".into(), PyValue::Num(100.0)),
                ]),
            ),
            ("E".into(), PyValue::Num(-3.14e100)),
        ]);
        assert_eq!(parsed, expected);
    }

    #[test]
    fn reports_line_of_error() {
        let err = parse_first_dict("P={'B': -1.0,\n 'E' -2}").unwrap_err();
        assert!(err.starts_with("line 2"), "{err}");
    }
}
