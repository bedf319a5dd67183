//! SentencePiece `tokenizer.model` files read directly (no tokenizer.json needed), encoding and
//! decoding exactly as the `sentencepiece` Python package's `encode(text)` / `decode(ids)`.
//!
//! - [`proto`]: the ModelProto fields used, decoded with prost.
//! - [`normalizer`]: precompiled charsmap, whitespace options, user-defined symbols.
//! - `bpe` / `unigram`: the two segmentation algorithms (`trie`: their prefix lookups).
//! - `decode`: ids back to text (byte pieces, unknown surface, the dummy-prefix space).
//! - [`slow`]: [`SpmSlowTokenizer`], a transformers slow tokenizer over a model (added-token
//!   splitting, as BaichuanTokenizer / LlamaTokenizer(legacy=True) do), used by
//!   [`super::TextTokenizer`] for folders that ship only `tokenizer.model`.

mod bpe;
mod decode;
pub mod normalizer;
pub mod proto;
pub mod slow;
mod trie;
mod unigram;
mod vocab;

use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Error, Result};
use normalizer::Normalizer;
pub use slow::SpmSlowTokenizer;
use vocab::Vocab;
pub use vocab::{PieceType, byte_of_piece};

/// The segmentation algorithm of a model (`trainer_spec.model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    Unigram,
    Bpe,
}

/// A loaded SentencePiece model.
#[derive(Debug, Clone)]
pub struct SpmModel {
    vocab: Vocab,
    normalizer: Normalizer,
    model_type: ModelType,
    /// Unigram score range (min over NORMAL pieces, max from FLT_MIN).
    score_range: (f32, f32),
    unk_surface: String,
    special_pieces: [String; 4],
    source: PathBuf,
}

/// sentencepiece's default text for an unknown piece when decoding.
const DEFAULT_UNK_SURFACE: &str = " \u{2047} ";

impl SpmModel {
    /// Reads a `tokenizer.model` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses a serialized ModelProto; `path` names the source in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::bad_file(path, msg);
        let proto = proto::ModelProto::decode(bytes).map_err(|e| {
            bad(format!(
                "not a SentencePiece model: expected a serialized ModelProto protobuf \
                 (sentencepiece_model.proto), got {} bytes that do not decode ({e})",
                bytes.len()
            ))
        })?;
        let (Some(trainer), Some(norm_spec)) = (&proto.trainer_spec, &proto.normalizer_spec) else {
            return Err(bad(format!(
                "not a complete SentencePiece model: expected pieces, trainer_spec and \
                 normalizer_spec, found {} pieces{}{} (truncated file?)",
                proto.pieces.len(),
                if proto.trainer_spec.is_none() {
                    ", no trainer_spec"
                } else {
                    ""
                },
                if proto.normalizer_spec.is_none() {
                    ", no normalizer_spec"
                } else {
                    ""
                },
            )));
        };
        if proto.pieces.is_empty() {
            return Err(bad("SentencePiece model has no pieces".into()));
        }
        let model_type = match trainer.model_type.unwrap_or(1) {
            1 => ModelType::Unigram,
            2 => ModelType::Bpe,
            3 => {
                return Err(Error::Unsupported(format!(
                    "{}: SentencePiece WORD models",
                    path.display()
                )));
            }
            4 => {
                return Err(Error::Unsupported(format!(
                    "{}: SentencePiece CHAR models",
                    path.display()
                )));
            }
            n => {
                return Err(bad(format!(
                    "trainer_spec.model_type {n} is not UNIGRAM (1) or BPE (2)"
                )));
            }
        };
        let denormalizer_map = proto
            .denormalizer_spec
            .as_ref()
            .and_then(|d| d.precompiled_charsmap.as_ref());
        if denormalizer_map.is_some_and(|m| !m.is_empty()) {
            return Err(Error::Unsupported(format!(
                "{}: a denormalizer_spec with a character map",
                path.display()
            )));
        }
        let vocab =
            Vocab::from_proto(&proto, trainer.byte_fallback.unwrap_or(false)).map_err(bad)?;
        let normalizer = Normalizer::new(
            norm_spec,
            vocab.user_defined.clone(),
            trainer.treat_whitespace_as_suffix.unwrap_or(false),
        )
        .map_err(bad)?;
        let piece_or = |p: &Option<String>, default: &str| match p.as_deref() {
            None | Some("") => default.to_string(),
            Some(s) => s.to_string(),
        };
        Ok(SpmModel {
            score_range: unigram::score_range(&vocab),
            vocab,
            normalizer,
            model_type,
            unk_surface: trainer
                .unk_surface
                .clone()
                .unwrap_or_else(|| DEFAULT_UNK_SURFACE.into()),
            special_pieces: [
                piece_or(&trainer.unk_piece, "<unk>"),
                piece_or(&trainer.bos_piece, "<s>"),
                piece_or(&trainer.eos_piece, "</s>"),
                piece_or(&trainer.pad_piece, "<pad>"),
            ],
            source: path.to_path_buf(),
        })
    }

    /// `sp.encode(text)`: the ids of `text`, no bos/eos.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_pieces(text)
            .into_iter()
            .map(|(_, id)| id)
            .collect()
    }

    /// `sp.encode(text, out_type=str)` with the ids: byte fallback pieces are `<0xXX>`; without
    /// byte fallback a run of unknown pieces is one piece (with the unk id).
    pub fn encode_pieces(&self, text: &str) -> Vec<(String, u32)> {
        let normalized = self.normalizer.normalize(text);
        let segments = match self.model_type {
            ModelType::Bpe => bpe::encode(&self.vocab, &normalized),
            ModelType::Unigram => {
                let (min, max) = self.score_range;
                unigram::encode(&self.vocab, min, max, &normalized)
            }
        };
        let mut out: Vec<(String, u32)> = Vec::with_capacity(segments.len());
        let mut prev_unk = false;
        for (piece, id) in segments {
            let is_unk = self.vocab.kind(id) == Some(PieceType::Unknown);
            if is_unk && self.vocab.byte_fallback {
                out.extend(
                    piece
                        .bytes()
                        .map(|b| (format!("<0x{b:02X}>"), self.vocab.byte_id(b))),
                );
            } else if is_unk && prev_unk {
                if let Some(last) = out.last_mut() {
                    last.0.push_str(piece);
                }
            } else {
                out.push((piece.to_string(), id));
            }
            prev_unk = is_unk;
        }
        out
    }

    /// `sp.decode(ids)`; an id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let pieces = ids
            .iter()
            .map(|&id| {
                self.id_to_piece(id).ok_or_else(|| {
                    Error::Tokenizer(format!(
                        "{}: id {id} is outside the vocabulary of {}",
                        self.source.display(),
                        self.vocab_size()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(self.decode_pieces(&pieces))
    }

    /// `sp.decode_pieces(pieces)`.
    pub fn decode_pieces(&self, pieces: &[&str]) -> String {
        decode::decode_pieces(self, pieces)
    }

    /// `sp.piece_to_id(piece)`: the unk id for pieces outside the vocabulary.
    pub fn piece_to_id(&self, piece: &str) -> u32 {
        self.vocab.piece_to_id(piece)
    }

    /// The id of `piece` when it is in the vocabulary.
    pub fn piece_id(&self, piece: &str) -> Option<u32> {
        self.vocab.exact_id(piece)
    }

    /// `sp.id_to_piece(id)`.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.vocab.pieces.get(id as usize).map(|p| p.piece.as_str())
    }

    /// The type of piece `id`.
    pub fn piece_type(&self, id: u32) -> Option<PieceType> {
        self.vocab.kind(id)
    }

    /// The score of piece `id` (0 when out of range).
    pub fn piece_score(&self, id: u32) -> f32 {
        self.vocab.score(id)
    }

    /// `sp.get_piece_size()`.
    pub fn vocab_size(&self) -> usize {
        self.vocab.pieces.len()
    }

    pub fn model_type(&self) -> ModelType {
        self.model_type
    }

    pub fn byte_fallback(&self) -> bool {
        self.vocab.byte_fallback
    }

    /// `sp.unk_id()`.
    pub fn unk_id(&self) -> u32 {
        self.vocab.unk_id
    }

    /// `sp.bos_id()`: the id of `trainer_spec.bos_piece` when it is a control piece.
    pub fn bos_id(&self) -> Option<u32> {
        self.control_id(&self.special_pieces[1])
    }

    /// `sp.eos_id()`: the id of `trainer_spec.eos_piece` when it is a control piece.
    pub fn eos_id(&self) -> Option<u32> {
        self.control_id(&self.special_pieces[2])
    }

    /// `sp.pad_id()`: the id of `trainer_spec.pad_piece` when it is a control piece.
    pub fn pad_id(&self) -> Option<u32> {
        self.control_id(&self.special_pieces[3])
    }

    fn control_id(&self, piece: &str) -> Option<u32> {
        let id = self.vocab.piece_to_id(piece);
        (self.vocab.kind(id) == Some(PieceType::Control)).then_some(id)
    }

    /// The file this model was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }
}
