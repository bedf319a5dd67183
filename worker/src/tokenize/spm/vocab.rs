//! The piece table of a SentencePiece model and sentencepiece's two piece-to-id maps:
//! "normal" pieces (NORMAL, USER_DEFINED, UNUSED), which segmentation may produce, and
//! "reserved" ones (UNKNOWN, CONTROL, BYTE), which only ids and byte fallback produce.

use std::collections::HashMap;

use super::normalizer::PrefixMatcher;
use super::proto::ModelProto;
use super::trie::PieceTrie;

/// `ModelProto.SentencePiece.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_proto(n: i32) -> Option<Self> {
        Some(match n {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return None,
        })
    }

    /// Whether segmentation may produce this piece (sentencepiece's `pieces_` map).
    fn is_normal(self) -> bool {
        matches!(
            self,
            PieceType::Normal | PieceType::UserDefined | PieceType::Unused
        )
    }
}

/// One vocabulary entry.
#[derive(Debug, Clone)]
pub struct PieceInfo {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// The pieces and their lookup maps.
#[derive(Debug, Clone)]
pub struct Vocab {
    pub pieces: Vec<PieceInfo>,
    normal: HashMap<String, u32>,
    reserved: HashMap<String, u32>,
    pub unk_id: u32,
    pub byte_fallback: bool,
    /// Ids of `<0x00>`..`<0xFF>` when byte fallback is on.
    byte_ids: Vec<u32>,
    /// The normal pieces by bytes, for the unigram lattice.
    pub normal_trie: PieceTrie,
    /// The user-defined symbols, matched before normalization and never split or merged.
    pub user_defined: PrefixMatcher,
}

impl Vocab {
    /// Checks the pieces as sentencepiece's `InitializePieces` does; errors say what is wrong.
    pub fn from_proto(proto: &ModelProto, byte_fallback: bool) -> Result<Self, String> {
        let mut pieces = Vec::with_capacity(proto.pieces.len());
        let mut normal = HashMap::new();
        let mut reserved = HashMap::new();
        let mut unk_id = None;
        let mut byte_ids = vec![None; 256];
        for (i, p) in proto.pieces.iter().enumerate() {
            let id = u32::try_from(i).map_err(|_| "more than 2^32 pieces".to_string())?;
            let piece = p.piece.clone().unwrap_or_default();
            if piece.is_empty() {
                return Err(format!("piece {i} is empty"));
            }
            let code = p.r#type.unwrap_or(1);
            let kind = PieceType::from_proto(code)
                .ok_or_else(|| format!("piece {i} ({piece:?}) has unknown type {code}"))?;
            let map = if kind.is_normal() {
                &mut normal
            } else {
                &mut reserved
            };
            if map.insert(piece.clone(), id).is_some() {
                return Err(format!("piece {piece:?} is defined twice"));
            }
            match kind {
                PieceType::Unknown if unk_id.is_some() => {
                    return Err(format!("a second unknown piece {piece:?} (id {i})"));
                }
                PieceType::Unknown => unk_id = Some(id),
                PieceType::Byte => {
                    let b = byte_of_piece(&piece)
                        .ok_or_else(|| format!("byte piece {piece:?} is not <0xXX>"))?;
                    if !byte_fallback {
                        return Err(format!(
                            "byte piece {piece:?} although trainer_spec.byte_fallback is false"
                        ));
                    }
                    byte_ids[usize::from(b)] = Some(id);
                }
                _ => {}
            }
            pieces.push(PieceInfo {
                piece,
                score: p.score.unwrap_or(0.0),
                kind,
            });
        }
        let unk_id = unk_id.ok_or("no piece of type UNKNOWN (unk is not defined)")?;
        let byte_ids: Vec<u32> = if byte_fallback {
            byte_ids
                .into_iter()
                .collect::<Option<_>>()
                .ok_or("trainer_spec.byte_fallback is true but not all 256 <0xXX> pieces exist")?
        } else {
            Vec::new()
        };
        let normal_trie = PieceTrie::new(normal.iter().map(|(p, &id)| (p.as_str(), id)));
        let user_defined = PrefixMatcher::new(
            pieces
                .iter()
                .filter(|p| p.kind == PieceType::UserDefined)
                .map(|p| p.piece.clone()),
        );
        Ok(Vocab {
            user_defined,
            pieces,
            normal,
            reserved,
            unk_id,
            byte_fallback,
            byte_ids,
            normal_trie,
        })
    }

    /// sentencepiece's `PieceToId`: reserved pieces first, then normal ones, else unk.
    pub fn piece_to_id(&self, piece: &str) -> u32 {
        self.exact_id(piece).unwrap_or(self.unk_id)
    }

    /// The id of `piece` if it is in the vocabulary (no unk fallback).
    pub fn exact_id(&self, piece: &str) -> Option<u32> {
        self.reserved
            .get(piece)
            .or_else(|| self.normal.get(piece))
            .copied()
    }

    /// Id of a piece segmentation may produce (NORMAL / USER_DEFINED / UNUSED).
    pub fn normal_id(&self, piece: &str) -> Option<u32> {
        self.normal.get(piece).copied()
    }

    pub fn kind(&self, id: u32) -> Option<PieceType> {
        self.pieces.get(id as usize).map(|p| p.kind)
    }

    pub fn score(&self, id: u32) -> f32 {
        self.pieces.get(id as usize).map_or(0.0, |p| p.score)
    }

    /// The id of byte piece `<0xXX>` (byte fallback models only).
    pub fn byte_id(&self, b: u8) -> u32 {
        self.byte_ids
            .get(usize::from(b))
            .copied()
            .unwrap_or(self.unk_id)
    }
}

/// The byte a `<0xXX>` piece stands for.
pub fn byte_of_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2
        || !hex
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
    {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_pieces_are_upper_case_hex() {
        assert_eq!(byte_of_piece("<0x0A>"), Some(10));
        assert_eq!(byte_of_piece("<0xff>"), None);
        assert_eq!(byte_of_piece("<0x100>"), None);
    }
}
