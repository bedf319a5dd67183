//! `SentencePieceProcessor::Decode`: pieces back to text. Control pieces vanish, the unknown
//! piece becomes `trainer_spec.unk_surface` (" ⁇ "), runs of byte pieces are decoded as UTF-8
//! with one U+FFFD per byte that does not start a valid character, U+2581 becomes a space, and
//! the space of the dummy prefix is dropped from the first piece.

use super::SpmModel;
use super::normalizer::SPACE_SYMBOL;
use super::vocab::{PieceType, byte_of_piece};

/// The text of `pieces` (looked up by piece, as sentencepiece does).
pub fn decode_pieces(model: &SpmModel, pieces: &[&str]) -> String {
    let strip_bos_ws =
        model.normalizer.add_dummy_prefix() || model.normalizer.remove_extra_whitespaces();
    let mut text = String::new();
    let mut bytes: Vec<u8> = Vec::new();
    let mut is_bos_ws = true;
    let mut bos_ws_seen = false;
    for &piece in pieces {
        let id = model.vocab.piece_to_id(piece);
        let kind = model.vocab.kind(id);
        if kind == Some(PieceType::Byte) {
            bytes.extend(byte_of_piece(piece));
            continue;
        }
        flush_bytes(&mut bytes, &mut text);
        if bos_ws_seen || !text.is_empty() {
            is_bos_ws = false;
        }
        bos_ws_seen = false;
        match kind {
            Some(PieceType::Control) => {}
            Some(PieceType::Unknown) => {
                if model.id_to_piece(id) == Some(piece) {
                    text.push_str(&model.unk_surface);
                } else {
                    text.push_str(piece);
                }
            }
            _ => {
                let mut piece = piece;
                if is_bos_ws
                    && strip_bos_ws
                    && let Some(rest) = piece.strip_prefix(SPACE_SYMBOL)
                {
                    piece = rest;
                    // With extra whitespace removal every leading space is dropped, so the
                    // next piece may strip one too.
                    bos_ws_seen = !model.normalizer.remove_extra_whitespaces();
                }
                text.push_str(&piece.replace(SPACE_SYMBOL, " "));
            }
        }
    }
    flush_bytes(&mut bytes, &mut text);
    text
}

/// Appends the UTF-8 text of `bytes`: each byte that does not begin a valid character
/// becomes U+FFFD on its own (sentencepiece consumes one byte per error).
fn flush_bytes(bytes: &mut Vec<u8>, text: &mut String) {
    let mut rest = bytes.as_slice();
    while let Some(&lead) = rest.first() {
        let len = match lead {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 0,
        };
        match rest.get(..len).filter(|_| len > 0).map(std::str::from_utf8) {
            Some(Ok(ch)) => {
                text.push_str(ch);
                rest = &rest[len..];
            }
            _ => {
                text.push('\u{FFFD}');
                rest = &rest[1..];
            }
        }
    }
    bytes.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_bytes_become_one_replacement_each() {
        let mut text = String::new();
        flush_bytes(
            &mut vec![0xE4, 0xBD, 0x41, 0xE4, 0xBD, 0xA0, 0xFF],
            &mut text,
        );
        assert_eq!(text, "\u{FFFD}\u{FFFD}A你\u{FFFD}");
    }
}
