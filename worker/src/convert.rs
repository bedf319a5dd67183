//! A GGUF checkpoint as an f32 HF model folder (`evalfleet-worker convert-gguf`): dequantized
//! `model.safetensors` and `config.json` ([`models::convert_gguf_to_hf`]) plus the tokenizer files
//! built from the GGUF vocabulary ([`tokenize::write_hf_tokenizer_files`]), so the folder loads
//! like any HF checkpoint (and in tools that read HF folders only).

use std::path::Path;

use crate::models::{self, DecoderConfig};
use crate::{Error, Result, tokenize};

/// Writes the HF folder `out` (created if needed; files of the same names are replaced) for the
/// GGUF file `gguf` and returns the model's configuration. The tokenizer files come first, so a
/// conversion that fails part-way never leaves weights without them.
pub fn gguf_to_hf_folder(gguf: &Path, out: &Path) -> Result<DecoderConfig> {
    let content = models::read_gguf_content(gguf)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    tokenize::write_hf_tokenizer_files(&content, gguf, out)?;
    models::convert_gguf_to_hf(gguf, out)
}
