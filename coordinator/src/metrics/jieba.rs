//! A port of `jieba.cut(text)` (jieba 0.42.1, accurate mode, `HMM=True`), reading jieba's own
//! `dict.txt` and `finalseg` tables, which `scripts/fetch-models.sh` takes from the PyPI sdist.
//!
//! Why not the `jieba-rs` crate: 0.11 deduplicates `dict.txt` (jieba counts the duplicate "B超"
//! line twice in its total, which shifts every route score), joins `abc_def`/`v1.2-3` in the HMM
//! skip splitter where jieba 0.42.1 yields `abc`, `_`, `def`, and uses wider Han ranges. Any of
//! these changes tokens, so the segmentation here follows the Python code step by step:
//!
//! 1. `re_han_default` (`[\u4E00-\u9FD5a-zA-Z0-9+#&._%-]+`) splits the text into blocks.
//! 2. Other blocks: `\r\n` and every other character become tokens of their own (whitespace
//!    matches of `re_skip_default` are yielded as they are; the rest character by character).
//! 3. Han blocks: the DAG of dictionary words, the best route by log frequency (ties to the longer
//!    word, as Python's tuple `max`), and runs of single characters that are not a dictionary
//!    word go through the HMM ([`super::hmm`]).

use std::collections::HashMap;
use std::path::Path;

use super::MetricsError;
use super::hmm::HmmModel;

/// jieba's dictionary (`FREQ`: every word and every prefix of a word, prefixes at 0) and HMM.
#[derive(Debug)]
pub struct Jieba {
    /// `ln(freq)` of each word, `None` for a prefix that is not a word (frequency 0).
    log_freq: HashMap<Box<str>, Option<f64>>,
    /// `ln(total)`, the sum of all dictionary lines' frequencies (duplicates counted twice).
    log_total: f64,
    hmm: HmmModel,
}

/// The files of jieba 0.42.1 that [`Jieba::load`] reads.
pub const JIEBA_FILES: [&str; 4] = ["dict.txt", "prob_start.py", "prob_trans.py", "prob_emit.py"];

fn read(dir: &Path, name: &str) -> Result<String, MetricsError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path)
        .map_err(|e| MetricsError::Data(format!("cannot read {}: {e}", path.display())))
}

impl Jieba {
    /// Loads `dict.txt` and `prob_{start,trans,emit}.py` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, MetricsError> {
        if !dir.join("dict.txt").is_file() {
            return Err(MetricsError::Data(format!(
                "jieba 0.42.1 data not found in {} (expected {}); run scripts/fetch-models.sh \
                 or point EVALFLEET_JIEBA_DIR at a folder with those files",
                dir.display(),
                JIEBA_FILES.join(", ")
            )));
        }
        let dict = read(dir, "dict.txt")?;
        let [start, trans, emit] =
            ["prob_start.py", "prob_trans.py", "prob_emit.py"].map(|f| read(dir, f));
        let hmm = HmmModel::from_sources(&start?, &trans?, &emit?)
            .map_err(|e| MetricsError::Data(format!("{}: {e}", dir.display())))?;
        Self::from_dict(&dict, hmm)
            .map_err(|e| MetricsError::Data(format!("{}: {e}", dir.join("dict.txt").display())))
    }

    /// `Tokenizer.gen_pfdict`: each line is `word freq [tag]`; the last frequency of a word wins,
    /// the total counts every line.
    fn from_dict(dict: &str, hmm: HmmModel) -> Result<Self, String> {
        let mut freq: HashMap<Box<str>, u64> = HashMap::with_capacity(600_000);
        let mut total: u64 = 0;
        let lines: Vec<&str> = dict.split('\n').collect();
        let count = if dict.ends_with('\n') {
            lines.len() - 1
        } else {
            lines.len()
        };
        for (lineno, line) in lines[..count].iter().enumerate() {
            // Python's bytes.strip(): ASCII whitespace, vertical tab included.
            let line = line.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
            let mut fields = line.split(' ');
            let (Some(word), Some(f)) = (fields.next(), fields.next()) else {
                return Err(format!(
                    "line {}: expected 'word freq [tag]', found {line:?}",
                    lineno + 1
                ));
            };
            let f: u64 = f
                .parse()
                .map_err(|_| format!("line {}: frequency {f:?} is not an integer", lineno + 1))?;
            freq.insert(word.into(), f);
            total += f;
            for (end, _) in word.char_indices().skip(1) {
                freq.entry(word[..end].into()).or_insert(0);
            }
        }
        let log_freq = freq
            .into_iter()
            .map(|(w, f)| (w, (f > 0).then(|| (f as f64).ln())))
            .collect();
        Ok(Jieba {
            log_freq,
            log_total: (total as f64).ln(),
            hmm,
        })
    }

    /// `list(jieba.cut(text))`: the tokens, as slices of `text`.
    pub fn cut<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(first) = rest.chars().next() {
            let han = is_han_default(first);
            let len = rest
                .find(|c: char| is_han_default(c) != han)
                .unwrap_or(rest.len());
            let (block, tail) = rest.split_at(len);
            if han {
                self.cut_dag(block, &mut out);
            } else {
                cut_other(block, &mut out);
            }
            rest = tail;
        }
        out
    }

    /// Is `word` in the dictionary with a frequency above 0 (`FREQ.get(word)` is truthy)?
    fn is_word(&self, word: &str) -> bool {
        matches!(self.log_freq.get(word), Some(Some(_)))
    }

    /// `get_DAG` + `calc`: for each character, the end (exclusive, in characters) of the word the
    /// best route takes from it.
    fn route(&self, block: &str, offsets: &[usize]) -> Vec<usize> {
        let n = offsets.len() - 1;
        let mut best: Vec<(f64, usize)> = vec![(0.0, 0); n + 1];
        for k in (0..n).rev() {
            let mut pick: Option<(f64, usize)> = None;
            let mut i = k;
            while i < n {
                match self.log_freq.get(&block[offsets[k]..offsets[i + 1]]) {
                    None => break,
                    Some(Some(lf)) => {
                        let prob = lf - self.log_total + best[i + 1].0;
                        // Python's max over (prob, index) tuples: equal scores go to the longer word.
                        if pick.is_none_or(|(p, x)| prob > p || (prob == p && i > x)) {
                            pick = Some((prob, i));
                        }
                    }
                    Some(None) => {}
                }
                i += 1;
            }
            // No word starts here: the character alone, at `log(FREQ.get(c) or 1) = 0`.
            best[k] = pick.unwrap_or((0.0 - self.log_total + best[k + 1].0, k));
        }
        best.iter().take(n).map(|&(_, last)| last + 1).collect()
    }

    /// `__cut_DAG`: walks the route; consecutive single characters are buffered and go to the
    /// HMM unless the buffer is one character or a dictionary word.
    fn cut_dag<'a>(&self, block: &'a str, out: &mut Vec<&'a str>) {
        let mut offsets: Vec<usize> = block.char_indices().map(|(i, _)| i).collect();
        offsets.push(block.len());
        let n = offsets.len() - 1;
        let route = self.route(block, &offsets);
        let mut x = 0;
        let mut buf_start: Option<usize> = None;
        while x < n {
            let y = route[x];
            if y - x == 1 {
                buf_start.get_or_insert(x);
            } else {
                if let Some(b) = buf_start.take() {
                    self.flush(&block[offsets[b]..offsets[x]], x - b, out);
                }
                out.push(&block[offsets[x]..offsets[y]]);
            }
            x = y;
        }
        if let Some(b) = buf_start {
            self.flush(&block[offsets[b]..], n - b, out);
        }
    }

    fn flush<'a>(&self, buf: &'a str, chars: usize, out: &mut Vec<&'a str>) {
        if chars == 1 {
            out.push(buf);
        } else if !self.is_word(buf) {
            self.hmm.cut(buf, out);
        } else {
            out.extend(buf.char_indices().map(|(i, c)| &buf[i..i + c.len_utf8()]));
        }
    }
}

/// `re_han_default`'s character class.
fn is_han_default(ch: char) -> bool {
    ('\u{4E00}'..='\u{9FD5}').contains(&ch)
        || ch.is_ascii_alphanumeric()
        || matches!(ch, '+' | '#' | '&' | '.' | '_' | '%' | '-')
}

/// A block outside `re_han_default`: `re_skip_default` (`\r\n|\s`) matches are tokens, and so is
/// every other character on its own, so only `\r\n` ever joins two characters.
fn cut_other<'a>(block: &'a str, out: &mut Vec<&'a str>) {
    let mut chars = block.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\r' && chars.peek().is_some_and(|&(_, next)| next == '\n') {
            chars.next();
            out.push(&block[i..i + 2]);
        } else {
            out.push(&block[i..i + c.len_utf8()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_blocks_split_per_char_except_crlf() {
        let mut out = Vec::new();
        cut_other("，\r\r\n 😀\n", &mut out);
        assert_eq!(out, ["，", "\r", "\r\n", " ", "😀", "\n"]);
    }

    #[test]
    fn han_default_class() {
        assert!("中a9+#&._%-".chars().all(is_han_default));
        assert!(!"，\u{9FD6}\u{3400}ａ 😀".chars().any(is_han_default));
    }
}
