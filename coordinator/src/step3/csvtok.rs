//! CSV records split as pandas' C tokenizer (`pd.read_csv` defaults) splits them: `,` between
//! fields, `"` quoting with `""` for a literal quote, newlines (`\n`, `\r\n`, `\r`) inside quotes
//! kept, text after a closing quote appended to the field, blank lines skipped, a leading UTF-8
//! byte-order mark dropped.

/// One record: its fields as written (quotes removed) and the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Line of the file (1-based) where the record starts.
    pub line: usize,
    /// The fields, unquoted.
    pub fields: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    StartRecord,
    StartField,
    InField,
    InQuoted,
    QuoteInQuoted,
}

/// Splits `text` into records. Never fails: like pandas, an unterminated quote runs to the end.
pub fn records(text: &str) -> Vec<Record> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut state = State::StartRecord;
    let (mut line, mut record_line) = (1usize, 1usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        // A `\r\n` pair is one line break; a lone `\r` is one too.
        let newline = c == '\n' || c == '\r';
        let crlf = c == '\r' && chars.peek() == Some(&'\n');
        if crlf {
            chars.next();
        }
        match state {
            State::StartRecord if newline => {}
            State::StartRecord | State::StartField => {
                if state == State::StartRecord {
                    record_line = line;
                }
                match c {
                    '"' => state = State::InQuoted,
                    ',' => {
                        fields.push(std::mem::take(&mut field));
                        state = State::StartField;
                    }
                    _ if newline => {
                        fields.push(std::mem::take(&mut field));
                        out.push(finish(&mut fields, record_line));
                        state = State::StartRecord;
                    }
                    _ => {
                        field.push(c);
                        state = State::InField;
                    }
                }
            }
            State::InField | State::QuoteInQuoted => match c {
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    state = State::StartField;
                }
                _ if newline => {
                    fields.push(std::mem::take(&mut field));
                    out.push(finish(&mut fields, record_line));
                    state = State::StartRecord;
                }
                '"' if state == State::QuoteInQuoted => {
                    field.push('"');
                    state = State::InQuoted;
                }
                _ => {
                    field.push(c);
                    state = State::InField;
                }
            },
            State::InQuoted => {
                if c == '"' {
                    state = State::QuoteInQuoted;
                } else if crlf {
                    // Inside quotes the break is kept as written.
                    field.push_str("\r\n");
                } else {
                    field.push(c);
                }
            }
        }
        if newline {
            line += 1;
        }
    }
    if state != State::StartRecord {
        fields.push(field);
        out.push(finish(&mut fields, record_line));
    }
    out
}

fn finish(fields: &mut Vec<String>, line: usize) -> Record {
    Record {
        line,
        fields: std::mem::take(fields),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<Vec<String>> {
        records(text).into_iter().map(|r| r.fields).collect()
    }

    #[test]
    fn quotes_commas_newlines_and_blank_lines() {
        let text = "\u{feff}a,\"b,c\",\"d\"\"e\"\n\n\"x\ny\",,z\"q\"\r\nlast,\"\",end";
        assert_eq!(
            fields(text),
            vec![
                vec!["a", "b,c", "d\"e"],
                vec!["x\ny", "", "z\"q\""],
                vec!["last", "", "end"]
            ]
        );
        let lines: Vec<usize> = records(text).iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![1, 3, 5]);
    }

    #[test]
    fn text_after_closing_quote_is_appended() {
        assert_eq!(fields("\"ab\"cd,e\n"), vec![vec!["abcd", "e"]]);
    }
}
