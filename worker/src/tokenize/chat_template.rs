//! A model's own (HF) chat template rendered as transformers' `apply_chat_template(tokenize=False)`
//! renders it: Jinja with `trim_blocks` and `lstrip_blocks`, a single trailing newline of the
//! template source dropped (Jinja2's default, which transformers keeps), Python string methods,
//! `raise_exception`, `strftime_now`, and a `tojson` that writes what Python's `json.dumps` does.

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind, syntax::SyntaxConfig};

use super::ChatMessage;
use super::pyjson::{DumpOptions, dumps, from_json};
use super::text::TextTokenizer;
use crate::error::{Error, Result};

const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTemplate")
    }
}

/// The special-token strings a template sees (transformers passes its special_tokens_map).
#[derive(Debug, Clone, Default)]
pub struct TemplateTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    pub additional_special_tokens: Vec<String>,
}

impl TemplateTokens {
    /// The special tokens of `tokenizer`.
    pub fn from_tokenizer(tokenizer: &TextTokenizer) -> Self {
        TemplateTokens {
            bos_token: tokenizer.bos_token().map(str::to_string),
            eos_token: tokenizer.eos_token().map(str::to_string),
            pad_token: tokenizer.pad_token().map(str::to_string),
            unk_token: tokenizer.unk_token().map(str::to_string),
            additional_special_tokens: tokenizer
                .additional_special_tokens()
                .into_iter()
                .map(str::to_string)
                .collect(),
        }
    }
}

impl ChatTemplate {
    /// Compiles a template source; syntax errors name the line.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| Error::Template(format!("chat template syntax config: {e}")))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_blocks(source))
            .map_err(|e| {
                Error::Template(format!("chat template does not compile: {}", describe(&e)))
            })?;
        Ok(ChatTemplate { env })
    }

    /// Renders `messages` with `add_generation_prompt`, the special tokens as variables, and
    /// `tools`/`documents` set to none (as transformers passes them when absent).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tokens: &TemplateTokens,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::Template(describe(&e)))?;
        let mut ctx = serde_json::Map::new();
        let mut put = |k: &str, v: Option<&String>| {
            if let Some(v) = v {
                ctx.insert(k.to_string(), serde_json::Value::String(v.clone()));
            }
        };
        put("bos_token", tokens.bos_token.as_ref());
        put("eos_token", tokens.eos_token.as_ref());
        put("pad_token", tokens.pad_token.as_ref());
        put("unk_token", tokens.unk_token.as_ref());
        if !tokens.additional_special_tokens.is_empty() {
            ctx.insert(
                "additional_special_tokens".into(),
                serde_json::json!(tokens.additional_special_tokens),
            );
        }
        ctx.insert("tools".into(), serde_json::Value::Null);
        ctx.insert("documents".into(), serde_json::Value::Null);
        ctx.insert("add_generation_prompt".into(), add_generation_prompt.into());
        let messages: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect();
        ctx.insert("messages".into(), serde_json::Value::Array(messages));
        let rendered = template.render(from_json(&serde_json::Value::Object(ctx)));
        rendered.map_err(|e| Error::Template(format!("chat template: {}", describe(&e))))
    }
}

/// transformers' `{% generation %}...{% endgeneration %}` (AssistantTracker) renders its body
/// unchanged; minijinja has no such tag, so it becomes `{% if true %}...{% endif %}`, keeping
/// the tags' whitespace-control markers.
fn rewrite_generation_blocks(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let word = inner.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        let replacement = match word {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                out.push_str("{%");
                out.push_str(&inner.replacen(word, r, 1));
                out.push_str("%}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// An error with its template line, and the message of `raise_exception` as is.
fn describe(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!("{e} (line {line})"),
        None => e.to_string(),
    }
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(
    value: Value,
    ensure_ascii: Option<bool>,
    kwargs: Kwargs,
) -> std::result::Result<String, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => Some(v.as_str().unwrap_or_default().to_string()),
        },
    };
    let separators: Option<Value> = kwargs.get("separators")?;
    let separators = match separators {
        Some(v) if !v.is_none() && !v.is_undefined() => {
            let parts: Vec<String> = v
                .try_iter()?
                .map(|p| p.as_str().unwrap_or_default().to_string())
                .collect();
            match parts.as_slice() {
                [item, key] => Some((item.clone(), key.clone())),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ));
                }
            }
        }
        _ => None,
    };
    let ensure_ascii = match kwargs.get::<Option<bool>>("ensure_ascii")? {
        Some(b) => b,
        None => ensure_ascii.unwrap_or(false),
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    dumps(
        &value,
        &DumpOptions {
            ensure_ascii,
            indent,
            separators,
            sort_keys,
        },
    )
}

/// transformers' `strftime_now(format)`: the current (UTC) time formatted with strftime codes.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    super::strftime::format_unix(secs, &format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
        pairs
            .iter()
            .map(|(r, c)| ChatMessage::new(*r, *c))
            .collect()
    }

    #[test]
    fn renders_with_trim_and_lstrip_blocks() {
        let src = "{% for m in messages %}\n  {{ m.role }}: {{ m.content.strip() }}\n{% endfor %}\n{% if add_generation_prompt %}A:{% endif %}\n";
        let t = ChatTemplate::new(src).unwrap();
        let out = t
            .render(&msgs(&[("user", " hi ")]), true, &TemplateTokens::default())
            .unwrap();
        // Same as Jinja2 with these settings (checked): lstrip only applies before block tags.
        assert_eq!(out, "  user: hi\nA:");
    }

    #[test]
    fn generation_tags_become_plain_blocks() {
        let src = "a{%- generation +%}b{% endgeneration -%} {{ x }}{% if y %}z{% endif %}";
        assert_eq!(
            rewrite_generation_blocks(src),
            "a{%- if true +%}b{% endif -%} {{ x }}{% if y %}z{% endif %}"
        );
    }

    #[test]
    fn raise_exception_surfaces_message() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}").unwrap();
        let err = t
            .render(&[], false, &TemplateTokens::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn tojson_like_python() {
        let t =
            ChatTemplate::new("{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=2) }}")
                .unwrap();
        let out = t
            .render(&msgs(&[("user", "é\"")]), false, &TemplateTokens::default())
            .unwrap();
        assert_eq!(
            out,
            "{\"role\": \"user\", \"content\": \"é\\\"\"}|{\n  \"role\": \"user\",\n  \"content\": \"é\\\"\"\n}"
        );
    }
}
