//! SentencePiece's normalizer: the precompiled character map (a darts-clone double-array trie
//! of rewrite rules, applied by longest prefix match), user-defined symbols (kept verbatim),
//! leading/trailing/repeated space removal, the dummy prefix and escaping ' ' as U+2581.
//!
//! This follows sentencepiece's `Normalizer::Normalize` rather than the `tokenizers` crate's
//! `Precompiled` normalizer, which applies the same map grapheme by grapheme and so can differ
//! on combining sequences.

use super::proto::NormalizerSpec;
use super::trie::PieceTrie;

/// U+2581, the piece alphabet's visible space.
pub const SPACE_SYMBOL: &str = "\u{2581}";

/// The longest user-defined symbol at the start of a string.
#[derive(Debug, Clone, Default)]
pub struct PrefixMatcher {
    trie: PieceTrie,
}

impl PrefixMatcher {
    pub fn new(symbols: impl IntoIterator<Item = String>) -> Self {
        let symbols: Vec<String> = symbols.into_iter().collect();
        PrefixMatcher {
            trie: PieceTrie::new(symbols.iter().map(|s| (s.as_str(), 0))),
        }
    }

    /// Byte length of the longest symbol that `text` starts with.
    pub fn longest_prefix(&self, text: &str) -> Option<usize> {
        self.trie.longest_prefix(text).map(|(len, _)| len)
    }
}

/// The precompiled character map: `<trie size u32 LE><trie units><NUL-terminated outputs>`.
#[derive(Debug, Clone)]
pub struct CharsMap {
    units: Vec<u32>,
    outputs: String,
}

impl CharsMap {
    /// Parses the `precompiled_charsmap` blob; the error says what is wrong with it.
    pub fn parse(blob: &[u8]) -> Result<Self, String> {
        let Some((size, rest)) = blob.split_first_chunk::<4>() else {
            return Err(format!(
                "precompiled_charsmap has {} bytes, too short for its header",
                blob.len()
            ));
        };
        let trie_size = u32::from_le_bytes(*size) as usize;
        if trie_size >= blob.len() || !trie_size.is_multiple_of(4) || trie_size > rest.len() {
            return Err(format!(
                "precompiled_charsmap declares a {trie_size}-byte trie in a {}-byte blob",
                blob.len()
            ));
        }
        let (trie, outputs) = rest.split_at(trie_size);
        let units = trie
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let outputs = String::from_utf8(outputs.to_vec())
            .map_err(|e| format!("precompiled_charsmap outputs are not UTF-8: {e}"))?;
        Ok(CharsMap { units, outputs })
    }

    /// The longest rule matching a prefix of `input`: (bytes consumed, replacement).
    fn longest_match(&self, input: &[u8]) -> Option<(usize, &str)> {
        let mut best = None;
        let unit = *self.units.first()?;
        let mut pos = offset(unit) as usize;
        for (i, &byte) in input.iter().enumerate() {
            pos ^= byte as usize;
            let Some(&unit) = self.units.get(pos) else {
                break;
            };
            if label(unit) != u32::from(byte) {
                break;
            }
            pos ^= offset(unit) as usize;
            if has_leaf(unit)
                && let Some(&leaf) = self.units.get(pos)
            {
                best = Some((i + 1, value(leaf) as usize));
            }
        }
        let (len, start) = best?;
        let tail = self.outputs.get(start..)?;
        let end = tail.find('\0').unwrap_or(tail.len());
        Some((len, &tail[..end]))
    }
}

// darts-clone unit layout: bit 8 = has a leaf child, bits 0-7 (and 31) = label, bits 10-31 =
// offset (scaled by 256 when bit 9 is set); a leaf unit holds its value in bits 0-30.
fn has_leaf(unit: u32) -> bool {
    (unit >> 8) & 1 == 1
}
fn value(unit: u32) -> u32 {
    unit & 0x7FFF_FFFF
}
fn label(unit: u32) -> u32 {
    unit & (0x8000_0000 | 0xFF)
}
fn offset(unit: u32) -> u32 {
    (unit >> 10) << ((unit & (1 << 9)) >> 6)
}

/// The normalizer of one model.
#[derive(Debug, Clone)]
pub struct Normalizer {
    charsmap: Option<CharsMap>,
    user_defined: PrefixMatcher,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    treat_whitespace_as_suffix: bool,
}

impl Normalizer {
    /// The normalizer `spec` describes; user-defined symbols pass through unnormalized.
    pub fn new(
        spec: &NormalizerSpec,
        user_defined: PrefixMatcher,
        treat_whitespace_as_suffix: bool,
    ) -> Result<Self, String> {
        let charsmap = match spec.precompiled_charsmap.as_deref() {
            None | Some([]) => None,
            Some(blob) => Some(CharsMap::parse(blob)?),
        };
        Ok(Normalizer {
            charsmap,
            user_defined,
            add_dummy_prefix: spec.add_dummy_prefix.unwrap_or(true),
            remove_extra_whitespaces: spec.remove_extra_whitespaces.unwrap_or(true),
            escape_whitespaces: spec.escape_whitespaces.unwrap_or(true),
            treat_whitespace_as_suffix,
        })
    }

    pub fn add_dummy_prefix(&self) -> bool {
        self.add_dummy_prefix
    }
    pub fn remove_extra_whitespaces(&self) -> bool {
        self.remove_extra_whitespaces
    }

    /// The normalized form of the next unit of `input` and how many bytes it consumes: a
    /// user-defined symbol verbatim, else the longest charsmap rule, else one character.
    fn normalize_prefix<'a>(&'a self, input: &'a str) -> (&'a str, usize) {
        if let Some(len) = self.user_defined.longest_prefix(input) {
            return (&input[..len], len);
        }
        if let Some((len, out)) = self
            .charsmap
            .as_ref()
            .and_then(|m| m.longest_match(input.as_bytes()))
            .filter(|(len, _)| input.is_char_boundary(*len))
        {
            return (out, len);
        }
        let len = input.chars().next().map_or(0, char::len_utf8);
        (&input[..len], len)
    }

    /// `Normalizer::Normalize`: the string the BPE / unigram model segments.
    pub fn normalize(&self, mut input: &str) -> String {
        if self.remove_extra_whitespaces {
            loop {
                let (out, len) = self.normalize_prefix(input);
                if input.is_empty() || out != " " {
                    break;
                }
                input = &input[len..];
            }
        }
        let mut normalized = String::with_capacity(input.len() * 3);
        if input.is_empty() {
            return normalized;
        }
        let space = if self.escape_whitespaces {
            SPACE_SYMBOL
        } else {
            " "
        };
        if !self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            normalized.push_str(space);
        }
        let mut is_prev_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut out, len) = self.normalize_prefix(input);
            if is_prev_space {
                out = out.trim_start_matches(' ');
            }
            if !out.is_empty() {
                if self.escape_whitespaces {
                    normalized.push_str(&out.replace(' ', SPACE_SYMBOL));
                } else {
                    normalized.push_str(out);
                }
                is_prev_space = out.ends_with(' ');
            }
            input = &input[len..];
            if !self.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        if self.remove_extra_whitespaces {
            while normalized.ends_with(space) {
                normalized.truncate(normalized.len() - space.len());
            }
        }
        if self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            normalized.push_str(space);
        }
        normalized
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dummy: bool, extra: bool) -> NormalizerSpec {
        NormalizerSpec {
            name: Some("identity".into()),
            precompiled_charsmap: None,
            add_dummy_prefix: Some(dummy),
            remove_extra_whitespaces: Some(extra),
            escape_whitespaces: Some(true),
        }
    }

    #[test]
    fn whitespace_options() {
        let n = Normalizer::new(&spec(true, true), PrefixMatcher::default(), false).unwrap();
        assert_eq!(n.normalize("  a  b "), "▁a▁b");
        assert_eq!(n.normalize("   "), "");
        let n = Normalizer::new(&spec(false, false), PrefixMatcher::default(), false).unwrap();
        assert_eq!(n.normalize(" a  b "), "▁a▁▁b▁");
    }

    #[test]
    fn user_defined_symbols_stay_verbatim() {
        let m = PrefixMatcher::new(["<a b>".to_string(), "<a".to_string()]);
        assert_eq!(m.longest_prefix("<a b>c"), Some(5));
        assert_eq!(m.longest_prefix("x<a"), None);
        let n = Normalizer::new(&spec(true, true), m, false).unwrap();
        assert_eq!(n.normalize("x <a b>"), "▁x▁<a▁b>");
    }

    #[test]
    fn bad_charsmap_is_reported() {
        let err = CharsMap::parse(&[255, 0, 0, 0, 1, 2]).unwrap_err();
        assert!(err.contains("255-byte trie"), "{err}");
    }
}
