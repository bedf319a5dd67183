//! Text to token ids and back: tokenizer.json or a GGUF vocabulary, the model's own chat template,
//! and LLaMA-Factory's named templates with their encoding and `cutoff_len` truncation.
