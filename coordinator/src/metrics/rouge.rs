//! rouge-chinese 1.0.3 `Rouge().get_scores(hyp, ref)[0]` with its defaults (rouge-1, rouge-2,
//! rouge-l; `exclusive=True`), on texts that are jieba tokens joined by spaces.
//!
//! Faithful details: `cut_sent`'s four regex passes; every piece with `len > 0` is kept and
//! normalised by `" ".join(piece.split())`, so a whitespace-only piece becomes an empty "word";
//! the words of all sentences are flattened; n-grams are sets (distinct n-grams, crossing sentence
//! boundaries); rouge-l is one plain LCS over the flattened word lists.

use std::collections::HashSet;

use super::pystr::{py_rstrip, py_split};

/// Unrounded precision, recall and F1 of one ROUGE variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawPrf {
    /// Precision.
    pub p: f64,
    /// Recall.
    pub r: f64,
    /// `2 * ((p * r) / (p + r + 1e-8))`, evaluated in that order.
    pub f: f64,
}

impl RawPrf {
    fn new(p: f64, r: f64) -> Self {
        RawPrf {
            p,
            r,
            f: 2.0 * ((p * r) / (p + r + 1e-8)),
        }
    }
}

/// Unrounded rouge-1, rouge-2 and rouge-l.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawRouge {
    /// Unigram overlap.
    pub rouge1: RawPrf,
    /// Bigram overlap.
    pub rouge2: RawPrf,
    /// Longest common subsequence.
    pub rougel: RawPrf,
}

const STOPS: [char; 4] = ['。', '！', '？', '?'];
const CLOSE_QUOTES: [char; 2] = ['”', '’'];

/// One `re.sub('(HEAD)(TAIL)', r'\1\n\2', text)` pass for a fixed-length head: scans left to
/// right, and after a match continues behind its tail character, as `re.sub` does.
fn insert_breaks(
    text: &[char],
    head: &dyn Fn(&[char]) -> bool,
    head_len: usize,
    tail: &dyn Fn(char) -> bool,
) -> Vec<char> {
    let mut out = Vec::with_capacity(text.len() + 8);
    let mut i = 0;
    while i < text.len() {
        let end = i + head_len;
        if end < text.len() && head(&text[i..end]) && tail(text[end]) {
            out.extend_from_slice(&text[i..end]);
            out.push('\n');
            out.push(text[end]);
            i = end + 1;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

/// `Rouge.cut_sent`: the sentences of `para`.
fn cut_sent(para: &str) -> Vec<String> {
    let not_close_quote = |c: char| !CLOSE_QUOTES.contains(&c);
    let mut t: Vec<char> = para.chars().collect();
    t = insert_breaks(&t, &|h| STOPS.contains(&h[0]), 1, &not_close_quote);
    t = insert_breaks(&t, &|h| h.iter().all(|&c| c == '.'), 6, &not_close_quote);
    t = insert_breaks(&t, &|h| h.iter().all(|&c| c == '…'), 2, &not_close_quote);
    t = insert_breaks(
        &t,
        &|h| STOPS.contains(&h[0]) && CLOSE_QUOTES.contains(&h[1]),
        2,
        &|c| !['，', '。', '！', '？', '?'].contains(&c),
    );
    let joined: String = t.into_iter().collect();
    py_rstrip(&joined).split('\n').map(str::to_owned).collect()
}

/// The flattened word list `_split_into_words` sees for one side.
fn words(text: &str) -> Vec<String> {
    cut_sent(text)
        .iter()
        .filter(|piece| !piece.is_empty())
        .map(|piece| py_split(piece).collect::<Vec<_>>().join(" "))
        .flat_map(|sentence| sentence.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

/// `rouge_n` with `exclusive=True`: distinct n-grams, precision over the hypothesis's.
fn rouge_n(hyp: &[String], reference: &[String], n: usize) -> RawPrf {
    let grams =
        |w: &[String]| -> HashSet<Vec<String>> { w.windows(n).map(<[String]>::to_vec).collect() };
    let (h, r) = (grams(hyp), grams(reference));
    let overlap = h.intersection(&r).count() as f64;
    let ratio = |count: usize| {
        if count == 0 {
            0.0
        } else {
            overlap / count as f64
        }
    };
    RawPrf::new(ratio(h.len()), ratio(r.len()))
}

/// Length of the longest common subsequence, in O(|a|·|b|) time and O(|b|) space.
fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// `Rouge().get_scores(hyp, reference)[0]`. `None` where rouge-chinese raises ("Hypothesis is
/// empty" and the like): a side with no sentence left, i.e. empty or whitespace-only text.
pub fn rouge(hyp: &str, reference: &str) -> Option<RawRouge> {
    let (h, r) = (words(hyp), words(reference));
    if h.is_empty() || r.is_empty() {
        return None;
    }
    let lcs = lcs_len(&r, &h) as f64;
    Some(RawRouge {
        rouge1: rouge_n(&h, &r, 1),
        rouge2: rouge_n(&h, &r, 2),
        rougel: RawPrf::new(lcs / h.len() as f64, lcs / r.len() as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_sent_passes() {
        assert_eq!(cut_sent("你好。他好！"), ["你好。", "他好！"]);
        assert_eq!(cut_sent("你好。”他说"), ["你好。”", "他说"]);
        assert_eq!(cut_sent("。。a"), ["。", "。a"]);
        assert_eq!(cut_sent(".......a"), ["......", ".a"]);
        assert_eq!(cut_sent("……好"), ["……", "好"]);
        assert_eq!(cut_sent("好。”，对"), ["好。”，对"]);
        assert_eq!(cut_sent("a \n b \n"), ["a ", " b"]);
    }

    #[test]
    fn whitespace_piece_is_an_empty_word() {
        assert_eq!(words("a \n \n b"), ["a", "", "b"]);
    }

    #[test]
    fn identical_texts_score_just_under_one() {
        let s = rouge("我 爱 你", "我 爱 你").unwrap();
        assert_eq!(s.rouge1.f, 0.999999995);
        assert_eq!(s.rougel.p, 1.0);
        assert!(rouge(" ", "a").is_none());
    }
}
