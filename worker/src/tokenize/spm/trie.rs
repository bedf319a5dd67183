//! A byte trie over pieces, for "every piece that is a prefix of this text" lookups (the
//! unigram lattice, user-defined symbols) in time proportional to the match length.

/// One trie node: sorted (byte, child) edges and the value of the key ending here.
#[derive(Debug, Clone, Default)]
struct Node {
    edges: Vec<(u8, u32)>,
    value: Option<u32>,
}

/// Keys (strings) to values, searched by common prefix.
#[derive(Debug, Clone)]
pub struct PieceTrie {
    nodes: Vec<Node>,
}

impl Default for PieceTrie {
    fn default() -> Self {
        PieceTrie {
            nodes: vec![Node::default()],
        }
    }
}

impl PieceTrie {
    /// A trie of `(key, value)` pairs; a repeated key keeps its last value.
    pub fn new<'k>(entries: impl IntoIterator<Item = (&'k str, u32)>) -> Self {
        let mut trie = PieceTrie::default();
        for (key, value) in entries {
            trie.insert(key, value);
        }
        trie
    }

    fn insert(&mut self, key: &str, value: u32) {
        let mut node = 0usize;
        for &b in key.as_bytes() {
            node = match self.nodes[node].edges.binary_search_by_key(&b, |e| e.0) {
                Ok(i) => self.nodes[node].edges[i].1 as usize,
                Err(i) => {
                    let child = self.nodes.len();
                    self.nodes.push(Node::default());
                    self.nodes[node].edges.insert(i, (b, child as u32));
                    child
                }
            };
        }
        self.nodes[node].value = Some(value);
    }

    /// Every key that is a prefix of `text`, shortest first: (byte length, value).
    pub fn prefixes<'a>(&'a self, text: &'a str) -> impl Iterator<Item = (usize, u32)> + 'a {
        let bytes = text.as_bytes();
        let mut node = Some(0usize);
        let mut i = 0;
        std::iter::from_fn(move || {
            while let Some(n) = node {
                let b = *bytes.get(i)?;
                let edges = &self.nodes[n].edges;
                node = edges
                    .binary_search_by_key(&b, |e| e.0)
                    .ok()
                    .map(|k| edges[k].1 as usize);
                i += 1;
                if let Some(value) = node.and_then(|c| self.nodes[c].value) {
                    return Some((i, value));
                }
            }
            None
        })
    }

    /// The longest key that is a prefix of `text`: (byte length, value).
    pub fn longest_prefix(&self, text: &str) -> Option<(usize, u32)> {
        self.prefixes(text).last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_all_prefixes_in_length_order() {
        let trie = PieceTrie::new([("a", 1), ("ab", 2), ("abcd", 3), ("b", 4), ("你", 5)]);
        assert_eq!(
            trie.prefixes("abcde").collect::<Vec<_>>(),
            [(1, 1), (2, 2), (4, 3)]
        );
        assert_eq!(trie.longest_prefix("abc"), Some((2, 2)));
        assert_eq!(trie.longest_prefix("你好"), Some((3, 5)));
        assert_eq!(trie.longest_prefix("c"), None);
        assert_eq!(PieceTrie::default().longest_prefix("a"), None);
    }
}
