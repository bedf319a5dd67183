//! SentencePiece BPE segmentation (`bpe::Model::Encode`): start from characters (user-defined
//! symbols whole and frozen), repeatedly merge the adjacent pair whose concatenation is the
//! highest-scoring normal piece (leftmost on ties), then split UNUSED pieces back into the
//! pieces they were merged from.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::vocab::{PieceType, Vocab};

/// A candidate merge of symbols `left` and `right` into a piece of `size` bytes.
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pair {}
impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pair {
    /// Max-heap order: higher score first, then the leftmost pair (sentencepiece compares
    /// scores with `<`, so -0.0 and 0.0 tie).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then(other.left.cmp(&self.left))
    }
}

/// A symbol: the byte range `start..end` of the normalized text, linked to its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    end: usize,
    prev: Option<usize>,
    next: Option<usize>,
    frozen: bool,
}

/// The pieces of `normalized` with their ids (unk for pieces outside the vocabulary).
pub fn encode<'a>(vocab: &Vocab, normalized: &'a str) -> Vec<(&'a str, u32)> {
    let matcher = &vocab.user_defined;
    let mut symbols: Vec<Symbol> = Vec::with_capacity(normalized.len());
    let mut pos = 0;
    while pos < normalized.len() {
        let rest = &normalized[pos..];
        let (len, frozen) = match matcher.longest_prefix(rest) {
            Some(len) => (len, true),
            None => (rest.chars().next().map_or(1, char::len_utf8), false),
        };
        let index = symbols.len();
        symbols.push(Symbol {
            start: pos,
            end: pos + len,
            prev: index.checked_sub(1),
            next: (pos + len < normalized.len()).then_some(index + 1),
            frozen,
        });
        pos += len;
    }
    if symbols.is_empty() {
        return Vec::new();
    }

    let mut agenda = BinaryHeap::new();
    // Merged UNUSED piece -> the two pieces it was made of, to undo those merges at the end.
    let mut rev_merge: HashMap<&'a str, (&'a str, &'a str)> = HashMap::new();
    let mut push_pair = |symbols: &[Symbol],
                         left: Option<usize>,
                         right: Option<usize>,
                         agenda: &mut BinaryHeap<Pair>| {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let (ls, rs) = (symbols[l], symbols[r]);
        if ls.frozen || rs.frozen {
            return;
        }
        let piece = &normalized[ls.start..rs.end];
        let Some(id) = vocab.normal_id(piece) else {
            return;
        };
        agenda.push(Pair {
            score: vocab.score(id),
            left: l,
            right: r,
            size: piece.len(),
        });
        if vocab.kind(id) == Some(PieceType::Unused) {
            rev_merge.insert(
                piece,
                (&normalized[ls.start..ls.end], &normalized[rs.start..rs.end]),
            );
        }
    };
    for i in 1..symbols.len() {
        push_pair(&symbols, Some(i - 1), Some(i), &mut agenda);
    }

    while let Some(top) = agenda.pop() {
        let (l, r) = (symbols[top.left], symbols[top.right]);
        // Stale: one side was merged away or has grown since this pair was queued.
        if l.start == l.end || r.start == r.end || (l.end - l.start) + (r.end - r.start) != top.size
        {
            continue;
        }
        symbols[top.left].end = r.end;
        symbols[top.left].next = r.next;
        if let Some(n) = r.next {
            symbols[n].prev = Some(top.left);
        }
        symbols[top.right].end = symbols[top.right].start;
        let prev = symbols[top.left].prev;
        let next = symbols[top.left].next;
        push_pair(&symbols, prev, Some(top.left), &mut agenda);
        push_pair(&symbols, Some(top.left), next, &mut agenda);
    }

    let mut out = Vec::new();
    let mut index = Some(0);
    while let Some(i) = index {
        let s = symbols[i];
        resegment(vocab, &rev_merge, &normalized[s.start..s.end], &mut out);
        index = s.next;
    }
    out
}

/// Emits `piece`, split back into its parts when it is an UNUSED piece.
fn resegment<'a>(
    vocab: &Vocab,
    rev_merge: &HashMap<&'a str, (&'a str, &'a str)>,
    piece: &'a str,
    out: &mut Vec<(&'a str, u32)>,
) {
    let id = vocab.piece_to_id(piece);
    if vocab.kind(id) == Some(PieceType::Unused)
        && let Some(&(left, right)) = rev_merge.get(piece)
    {
        resegment(vocab, rev_merge, left, out);
        resegment(vocab, rev_merge, right, out);
        return;
    }
    out.push((piece, id));
}
