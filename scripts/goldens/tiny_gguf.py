#!/usr/bin/env python3
"""Writes the tiny random qwen2 checkpoint (worker/tests/fixtures/tiny-qwen2/model, made by
tiny_models.py) as worker/tests/fixtures/tiny-qwen2/model.gguf, the way llama.cpp's
convert_hf_to_gguf.py lays out a Qwen2 model, for worker/tests/models_parity.rs.

What matters for the loader, following llama.cpp's Qwen2 conversion:
  - general.architecture "qwen2" and the qwen2.* hyperparameter keys;
  - q/k weights are written as they are in the HF checkpoint: Qwen2 runs NEOX (half-split) RoPE,
    so unlike LLAMA there is no row permutation for interleaved rotary pairs;
  - the q/k/v biases are blk.N.attn_{q,k,v}.bias;
  - tied embeddings: no output.weight (llama.cpp then uses token_embd.weight for the head).
All tensors are F32 so that the logits can be compared with the transformers reference at 1e-4.
The tokenizer is a placeholder vocabulary (<t0>..<tN>): the fixture's inputs are token ids.
Usage: /path/to/venv/bin/python scripts/goldens/tiny_gguf.py
"""
import json
import os

import gguf
import numpy as np
from safetensors.numpy import load_file

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "worker", "tests",
                       "fixtures", "tiny-qwen2")

# HF name part inside a block -> GGUF name part.
BLOCK_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_name(hf: str) -> str:
    stem, suffix = hf.rsplit(".", 1)
    if stem.startswith("model.layers."):
        i, part = stem[len("model.layers."):].split(".", 1)
        return f"blk.{i}.{BLOCK_NAMES[part]}.{suffix}"
    return f"{TOP_NAMES[stem]}.{suffix}"


def main():
    model_dir = os.path.join(FIXTURE, "model")
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["architectures"] == ["Qwen2ForCausalLM"], cfg["architectures"]
    theta = cfg.get("rope_parameters", {}).get("rope_theta", cfg.get("rope_theta"))
    tensors = load_file(os.path.join(model_dir, "model.safetensors"))

    w = gguf.GGUFWriter(os.path.join(FIXTURE, "model.gguf"), "qwen2")
    w.add_name("tiny-qwen2")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])

    vocab = cfg["vocab_size"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list([f"<t{i}>" for i in range(vocab)])
    w.add_token_types([gguf.TokenType.NORMAL] * vocab)
    w.add_token_merges([])

    for hf, t in sorted(tensors.items()):
        if hf == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue  # tied: llama.cpp's converter leaves output.weight out
        # No q/k permutation: Qwen2 uses NEOX rope, the HF layout as it is.
        w.add_tensor(gguf_name(hf), np.ascontiguousarray(t.astype(np.float32)))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
