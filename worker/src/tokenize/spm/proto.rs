//! The parts of SentencePiece's `ModelProto` (sentencepiece_model.proto, proto2) that encoding
//! and decoding need, as prost messages. Field numbers follow the public .proto; every other
//! field (self-test data, training-only options) is skipped by prost when decoding.

/// A whole `tokenizer.model` file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pub pieces: Vec<Piece>,
    #[prost(message, optional, tag = "2")]
    pub trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    pub normalizer_spec: Option<NormalizerSpec>,
    #[prost(message, optional, tag = "5")]
    pub denormalizer_spec: Option<NormalizerSpec>,
}

/// `ModelProto.SentencePiece`: one vocabulary entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Piece {
    #[prost(string, optional, tag = "1")]
    pub piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    pub score: Option<f32>,
    /// `SentencePiece.Type` (an enum on the wire is a varint, read here as its number).
    #[prost(int32, optional, tag = "3")]
    pub r#type: Option<i32>,
}

/// `TrainerSpec`: the options that still matter after training.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrainerSpec {
    /// 1 = UNIGRAM (the proto default), 2 = BPE, 3 = WORD, 4 = CHAR.
    #[prost(int32, optional, tag = "3")]
    pub model_type: Option<i32>,
    #[prost(bool, optional, tag = "24")]
    pub treat_whitespace_as_suffix: Option<bool>,
    #[prost(bool, optional, tag = "35")]
    pub byte_fallback: Option<bool>,
    #[prost(string, optional, tag = "44")]
    pub unk_surface: Option<String>,
    #[prost(string, optional, tag = "45")]
    pub unk_piece: Option<String>,
    #[prost(string, optional, tag = "46")]
    pub bos_piece: Option<String>,
    #[prost(string, optional, tag = "47")]
    pub eos_piece: Option<String>,
    #[prost(string, optional, tag = "48")]
    pub pad_piece: Option<String>,
}

/// `NormalizerSpec`: how text is normalized before it is split into pieces.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NormalizerSpec {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub precompiled_charsmap: Option<Vec<u8>>,
    #[prost(bool, optional, tag = "3")]
    pub add_dummy_prefix: Option<bool>,
    #[prost(bool, optional, tag = "4")]
    pub remove_extra_whitespaces: Option<bool>,
    #[prost(bool, optional, tag = "5")]
    pub escape_whitespaces: Option<bool>,
}
