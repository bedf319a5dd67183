//! jieba 0.42.1's `finalseg`: the BMES hidden Markov model that segments runs of characters the
//! dictionary route left as single characters and that are not themselves a dictionary word.
//!
//! Faithful details: Han runs are `[\u4E00-\u9FD5]+`; other runs are split by finalseg's own
//! `re_skip` (`[a-zA-Z0-9]+(?:\.\d+)?%?`) and both the matches and the text between them are
//! yielded whole; Viterbi ties go to the state with the larger letter (Python compares
//! `(prob, state)` tuples), the final state is the better of E and S.

use std::collections::HashMap;

use super::pylit::{PyValue, parse_first_dict};

/// finalseg's score for an unseen emission or transition.
const MIN_FLOAT: f64 = -3.14e100;

/// The four states in jieba's iteration order `'BMES'`.
const STATES: [u8; 4] = [b'B', b'M', b'E', b'S'];
const B: usize = 0;
const M: usize = 1;
const E: usize = 2;
const S: usize = 3;

/// `PrevStatus`: which states may precede each state, in jieba's order.
const PREV: [[usize; 2]; 4] = [[E, S], [M, B], [B, M], [S, E]];

/// The HMM tables of `finalseg` (`prob_start.py`, `prob_trans.py`, `prob_emit.py`).
#[derive(Debug)]
pub struct HmmModel {
    start: [f64; 4],
    trans: [[f64; 4]; 4],
    emit: HashMap<char, [f64; 4]>,
}

fn state_index(key: &str) -> Option<usize> {
    STATES.iter().position(|&s| key.as_bytes() == [s])
}

/// The entries of a dict literal.
type Entries = [(String, PyValue)];

fn as_dict<'v>(value: &'v PyValue, what: &str) -> Result<&'v Entries, String> {
    match value {
        PyValue::Dict(entries) => Ok(entries),
        PyValue::Num(_) => Err(format!("{what}: expected a dict, found a number")),
    }
}

fn as_num(value: &PyValue, what: &str) -> Result<f64, String> {
    match value {
        PyValue::Num(x) => Ok(*x),
        PyValue::Dict(_) => Err(format!("{what}: expected a number, found a dict")),
    }
}

/// Reads `{'B': {...}, 'M': {...}, ...}` into one row per state, keyed by state or character.
fn per_state<'v>(value: &'v PyValue, what: &str) -> Result<Vec<(usize, &'v Entries)>, String> {
    as_dict(value, what)?
        .iter()
        .map(|(key, inner)| {
            let state = state_index(key).ok_or_else(|| format!("{what}: unknown state '{key}'"))?;
            Ok((state, as_dict(inner, what)?))
        })
        .collect()
}

impl HmmModel {
    /// Builds the model from the source text of the three `prob_*.py` files. Errors name the file
    /// (by its role) and what was wrong.
    pub fn from_sources(start_src: &str, trans_src: &str, emit_src: &str) -> Result<Self, String> {
        let mut start = [MIN_FLOAT; 4];
        for (key, value) in as_dict(
            &parse_first_dict(start_src).map_err(|e| format!("prob_start.py: {e}"))?,
            "prob_start.py",
        )? {
            let state =
                state_index(key).ok_or_else(|| format!("prob_start.py: unknown state '{key}'"))?;
            start[state] = as_num(value, "prob_start.py")?;
        }
        let mut trans = [[MIN_FLOAT; 4]; 4];
        let trans_dict = parse_first_dict(trans_src).map_err(|e| format!("prob_trans.py: {e}"))?;
        for (from, row) in per_state(&trans_dict, "prob_trans.py")? {
            for (key, value) in row {
                let to = state_index(key)
                    .ok_or_else(|| format!("prob_trans.py: unknown state '{key}'"))?;
                trans[from][to] = as_num(value, "prob_trans.py")?;
            }
        }
        let mut emit: HashMap<char, [f64; 4]> = HashMap::new();
        let emit_dict = parse_first_dict(emit_src).map_err(|e| format!("prob_emit.py: {e}"))?;
        for (state, row) in per_state(&emit_dict, "prob_emit.py")? {
            for (key, value) in row {
                let mut chars = key.chars();
                let (Some(ch), None) = (chars.next(), chars.next()) else {
                    return Err(format!("prob_emit.py: key '{key}' is not one character"));
                };
                emit.entry(ch).or_insert([MIN_FLOAT; 4])[state] = as_num(value, "prob_emit.py")?;
            }
        }
        Ok(HmmModel { start, trans, emit })
    }

    fn emit_of(&self, ch: char) -> [f64; 4] {
        self.emit.get(&ch).copied().unwrap_or([MIN_FLOAT; 4])
    }

    /// `finalseg.viterbi`: the best state index for each character of a non-empty run.
    fn viterbi(&self, chars: &[char]) -> Vec<usize> {
        let first = self.emit_of(chars[0]);
        let mut v: [f64; 4] = std::array::from_fn(|y| self.start[y] + first[y]);
        // back[t][y]: the state before y at step t.
        let mut back: Vec<[usize; 4]> = Vec::with_capacity(chars.len());
        back.push([0; 4]);
        for &ch in &chars[1..] {
            let em = self.emit_of(ch);
            let mut next = [0.0; 4];
            let mut from = [0usize; 4];
            for y in 0..4 {
                let [a, b] = PREV[y];
                let pa = v[a] + self.trans[a][y] + em[y];
                let pb = v[b] + self.trans[b][y] + em[y];
                // Python's max over (prob, state) tuples: ties go to the larger state letter.
                let a_wins = pa > pb || (pa == pb && STATES[a] > STATES[b]);
                (next[y], from[y]) = if a_wins { (pa, a) } else { (pb, b) };
            }
            v = next;
            back.push(from);
        }
        let mut state = if v[S] >= v[E] { S } else { E };
        let mut path = vec![0; chars.len()];
        for t in (0..chars.len()).rev() {
            path[t] = state;
            state = back[t][state];
        }
        path
    }

    /// `finalseg.__cut` on a run of Han characters: words along the Viterbi path.
    fn cut_han<'a>(&self, text: &'a str, offsets: &[usize], out: &mut Vec<&'a str>) {
        let chars: Vec<char> = text.chars().collect();
        let path = self.viterbi(&chars);
        let (mut begin, mut next) = (0, 0);
        for (i, &state) in path.iter().enumerate() {
            match state {
                B => begin = i,
                E => {
                    out.push(&text[offsets[begin]..offsets[i + 1]]);
                    next = i + 1;
                }
                S => {
                    out.push(&text[offsets[i]..offsets[i + 1]]);
                    next = i + 1;
                }
                _ => {}
            }
        }
        if next < chars.len() {
            out.push(&text[offsets[next]..]);
        }
    }

    /// `finalseg.cut(text)`, appending the words to `out`.
    pub fn cut<'a>(&self, text: &'a str, out: &mut Vec<&'a str>) {
        let mut rest = text;
        while let Some(first) = rest.chars().next() {
            let han = is_hmm_han(first);
            let len = rest
                .find(|c: char| is_hmm_han(c) != han)
                .unwrap_or(rest.len());
            let (run, tail) = rest.split_at(len);
            if han {
                let mut offsets: Vec<usize> = run.char_indices().map(|(i, _)| i).collect();
                offsets.push(run.len());
                self.cut_han(run, &offsets, out);
            } else {
                split_skip(run, out);
            }
            rest = tail;
        }
    }
}

/// finalseg's `re_han`.
fn is_hmm_han(ch: char) -> bool {
    ('\u{4E00}'..='\u{9FD5}').contains(&ch)
}

/// Length of a `[a-zA-Z0-9]+(?:\.\d+)?%?` match at the start of `s`, which starts with an ASCII
/// alphanumeric. `\d` is Unicode in Python, but the text reaching finalseg comes from a jieba block
/// (`[\u4E00-\u9FD5a-zA-Z0-9+#&._%-]`), where the only digits are ASCII.
fn skip_match_len(s: &[u8]) -> usize {
    let mut end = s
        .iter()
        .position(|b| !b.is_ascii_alphanumeric())
        .unwrap_or(s.len());
    if s.get(end) == Some(&b'.') && s.get(end + 1).is_some_and(u8::is_ascii_digit) {
        end += 1;
        end += s[end..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(s.len() - end);
    }
    if s.get(end) == Some(&b'%') {
        end += 1;
    }
    end
}

/// `re_skip.split(run)` keeping the non-empty pieces: the matches and the text between them.
fn split_skip<'a>(run: &'a str, out: &mut Vec<&'a str>) {
    let bytes = run.as_bytes();
    let (mut pos, mut gap) = (0, 0);
    while pos < bytes.len() {
        if bytes[pos].is_ascii_alphanumeric() {
            if gap < pos {
                out.push(&run[gap..pos]);
            }
            let len = skip_match_len(&bytes[pos..]);
            out.push(&run[pos..pos + len]);
            pos += len;
            gap = pos;
        } else {
            pos += 1;
        }
    }
    if gap < bytes.len() {
        out.push(&run[gap..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip(s: &str) -> Vec<&str> {
        let mut out = Vec::new();
        split_skip(s, &mut out);
        out
    }

    #[test]
    fn skip_split_is_finalseg_regex() {
        assert_eq!(skip("abc+123"), ["abc", "+", "123"]);
        assert_eq!(skip("1.5.6%"), ["1.5", ".", "6%"]);
        assert_eq!(skip("abc_def.ghi"), ["abc", "_", "def", ".", "ghi"]);
        assert_eq!(skip("x.1y"), ["x.1", "y"]);
        assert_eq!(skip("++##"), ["++##"]);
        assert_eq!(skip("v1.2-3_4%"), ["v1.2", "-", "3", "_", "4%"]);
    }
}
