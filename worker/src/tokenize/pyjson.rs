//! Python's `json.dumps` output for template values, as transformers' `tojson` filter produces it
//! (`ensure_ascii=False` by default, `indent`, `separators`, `sort_keys`).

use minijinja::Value;
use minijinja::value::ValueKind;

/// A template value from JSON (objects keep their key order).
pub fn from_json(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (_, Some(u), _) => Value::from(u),
            (_, _, Some(f)) => Value::from(f),
            _ => Value::from(()),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => {
            Value::from(items.iter().map(from_json).collect::<Vec<_>>())
        }
        serde_json::Value::Object(map) => Value::from_pairs(
            map.iter()
                .map(|(k, v)| (Value::from(k.as_str()), from_json(v))),
        ),
    }
}

/// Options of `json.dumps` that templates can pass.
#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    pub ensure_ascii: bool,
    /// `None`: one line. `Some(s)`: newline + `s` repeated per level (an int indent is spaces).
    pub indent: Option<String>,
    /// (item separator, key separator); `None` uses Python's defaults for the indent mode.
    pub separators: Option<(String, String)>,
    pub sort_keys: bool,
}

/// `json.dumps(value, ...)` with Python's formatting.
pub fn dumps(value: &Value, opts: &DumpOptions) -> Result<String, minijinja::Error> {
    let (item_sep, key_sep) = match &opts.separators {
        Some((i, k)) => (i.clone(), k.clone()),
        None if opts.indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let mut out = String::new();
    let w = Writer {
        opts,
        item_sep: &item_sep,
        key_sep: &key_sep,
    };
    w.value(&mut out, value, 0)?;
    Ok(out)
}

struct Writer<'a> {
    opts: &'a DumpOptions,
    item_sep: &'a str,
    key_sep: &'a str,
}

impl Writer<'_> {
    fn value(&self, out: &mut String, v: &Value, level: usize) -> Result<(), minijinja::Error> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&number(v)),
            ValueKind::String => self.string(out, v.as_str().unwrap_or_default()),
            ValueKind::Map => self.map(out, v, level)?,
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.seq(out, &items, level)?
            }
            _ => {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("tojson: cannot serialise a value of kind {}", v.kind()),
                ));
            }
        }
        Ok(())
    }

    fn newline(&self, out: &mut String, level: usize) {
        if let Some(ind) = &self.opts.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    }

    fn seq(&self, out: &mut String, items: &[Value], level: usize) -> Result<(), minijinja::Error> {
        if items.is_empty() {
            out.push_str("[]");
            return Ok(());
        }
        out.push('[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(self.item_sep);
            }
            self.newline(out, level + 1);
            self.value(out, item, level + 1)?;
        }
        self.newline(out, level);
        out.push(']');
        Ok(())
    }

    fn map(&self, out: &mut String, v: &Value, level: usize) -> Result<(), minijinja::Error> {
        let mut keys: Vec<Value> = v.try_iter()?.collect();
        if keys.is_empty() {
            out.push_str("{}");
            return Ok(());
        }
        if self.opts.sort_keys {
            keys.sort_by_key(key_text);
        }
        out.push('{');
        for (i, key) in keys.iter().enumerate() {
            if i > 0 {
                out.push_str(self.item_sep);
            }
            self.newline(out, level + 1);
            self.string(out, &key_text(key));
            out.push_str(self.key_sep);
            self.value(out, &v.get_item(key)?, level + 1)?;
        }
        self.newline(out, level);
        out.push('}');
        Ok(())
    }

    fn string(&self, out: &mut String, s: &str) {
        evalfleet_pyfmt::push_json_string(out, s, self.opts.ensure_ascii);
    }
}

/// A mapping key as Python's json writes it (str keys as is; numbers/bools/None converted).
fn key_text(key: &Value) -> String {
    match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
        ValueKind::None | ValueKind::Undefined => "null".to_string(),
        ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_string(),
        ValueKind::Number => number(key),
        _ => key.to_string(),
    }
}

fn number(v: &Value) -> String {
    if v.is_integer() {
        return i128::try_from(v.clone())
            .map(|i| i.to_string())
            .unwrap_or_else(|_| v.to_string());
    }
    match f64::try_from(v.clone()) {
        Ok(f) => evalfleet_pyfmt::json_float(f),
        Err(_) => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_matches_python_layouts() {
        let v = from_json(&serde_json::json!({"b": [1, 2.5, "é\n"], "a": {}, "c": null}));
        let compact = dumps(&v, &DumpOptions::default()).unwrap();
        assert_eq!(
            compact,
            "{\"b\": [1, 2.5, \"é\\n\"], \"a\": {}, \"c\": null}"
        );
        let opts = DumpOptions {
            indent: Some("  ".into()),
            sort_keys: true,
            ..Default::default()
        };
        let pretty = dumps(&v, &opts).unwrap();
        assert_eq!(
            pretty,
            "{\n  \"a\": {},\n  \"b\": [\n    1,\n    2.5,\n    \"é\\n\"\n  ],\n  \"c\": null\n}"
        );
        let ascii = DumpOptions {
            ensure_ascii: true,
            ..Default::default()
        };
        assert_eq!(
            dumps(&Value::from("é😀"), &ascii).unwrap(),
            "\"\\u00e9\\ud83d\\ude00\""
        );
    }
}
