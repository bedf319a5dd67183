//! SentencePiece unigram segmentation (`unigram::Model::EncodeOptimized`, the default encoder):
//! Viterbi over every normal piece that matches at each character position, with an unknown
//! node of score `min_score - 10` for a character no one-character piece covers.
//!
//! Scores are summed in f32 as sentencepiece does (user-defined pieces in f64, as its C++
//! arithmetic promotes them), so ties resolve the same way.

use super::vocab::{PieceType, Vocab};

/// sentencepiece's `kUnkPenalty`.
const UNK_PENALTY: f32 = 10.0;

/// Best path ending at a byte position: where its last piece starts and that piece's id.
#[derive(Clone, Copy)]
struct BestEnd {
    score: f32,
    start: Option<usize>,
    id: u32,
}

/// Min and max score over NORMAL pieces, as the unigram model computes them (the max starts
/// from FLT_MIN, the smallest positive f32, like sentencepiece's).
pub fn score_range(vocab: &Vocab) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = f32::MIN_POSITIVE;
    for p in vocab.pieces.iter().filter(|p| p.kind == PieceType::Normal) {
        min = min.min(p.score);
        max = max.max(p.score);
    }
    (min, max)
}

/// The pieces of `normalized` with their ids (unk ids for uncovered characters).
pub fn encode<'a>(
    vocab: &Vocab,
    min_score: f32,
    max_score: f32,
    normalized: &'a str,
) -> Vec<(&'a str, u32)> {
    let size = normalized.len();
    if size == 0 {
        return Vec::new();
    }
    let unk_score = min_score - UNK_PENALTY;
    let mut best = vec![
        BestEnd {
            score: 0.0,
            start: None,
            id: vocab.unk_id,
        };
        size + 1
    ];
    let mut start = 0;
    for ch in normalized.chars() {
        let char_len = ch.len_utf8();
        let here = best[start].score;
        let mut has_single = false;
        // Shortest piece first, as sentencepiece walks its trie.
        for (length, id) in vocab.normal_trie.prefixes(&normalized[start..]) {
            let end = start + length;
            let kind = vocab.kind(id);
            if kind == Some(PieceType::Unused) {
                continue;
            }
            let target = &mut best[end];
            if kind == Some(PieceType::UserDefined) {
                // C++: `length * max_score_ - 0.1` is a double, and so is the sum.
                let score = f64::from(length as f32 * max_score) - 0.1;
                let candidate = score + f64::from(here);
                if target.start.is_none() || candidate > f64::from(target.score) {
                    *target = BestEnd {
                        score: candidate as f32,
                        start: Some(start),
                        id,
                    };
                }
            } else {
                let candidate = vocab.score(id) + here;
                if target.start.is_none() || candidate > target.score {
                    *target = BestEnd {
                        score: candidate,
                        start: Some(start),
                        id,
                    };
                }
            }
            if length == char_len {
                has_single = true;
            }
        }
        if !has_single {
            let target = &mut best[start + char_len];
            let candidate = unk_score + here;
            if target.start.is_none() || candidate > target.score {
                *target = BestEnd {
                    score: candidate,
                    start: Some(start),
                    id: vocab.unk_id,
                };
            }
        }
        start += char_len;
    }
    let mut out = Vec::new();
    let mut end = size;
    while end > 0 {
        let node = best[end];
        // Every position is reachable: an unknown node always covers the next character.
        let start = node.start.unwrap_or(0);
        out.push((&normalized[start..end], node.id));
        end = start;
    }
    out.reverse();
    out
}
