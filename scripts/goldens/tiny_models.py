#!/usr/bin/env python3
"""Writes the tiny random llama / qwen2 / mistral checkpoints and their reference logits used by
worker/tests/models_parity.rs (run once; the outputs are committed).

For each architecture, into worker/tests/fixtures/tiny-<arch>/:
  model/           HF folder, f32 safetensors (llama: sharded in 2 files with an index)
  lora/            a random PEFT LoRA adapter (non-zero B)
  lora2/           (llama only) a second adapter, rsLoRA, merged after the first
  reference.json   token ids, attention masks and position ids of the inputs
  reference.safetensors  f32 logits at every position: {single,batch}.{base,lora[,lora2]}

Inputs: one unpadded sequence of 12 tokens, and a left-padded batch of 3 rows (lengths 12, 7, 3)
with attention_mask and position_ids as transformers' generate computes them.
Usage: /path/to/venv/bin/python scripts/goldens/tiny_models.py
"""
import copy
import json
import os

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "worker", "tests",
                    "fixtures")
VOCAB = 256
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              torch_dtype="float32")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def models():
    yield "llama", LlamaForCausalLM(LlamaConfig(
        **COMMON, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32}))
    yield "qwen2", Qwen2ForCausalLM(Qwen2Config(
        **COMMON, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        use_sliding_window=False))
    # head_dim 32 with 4 heads (128 != hidden 64) and a window smaller than the sequence.
    yield "mistral", MistralForCausalLM(MistralConfig(
        **COMMON, head_dim=32, rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=4,
        tie_word_embeddings=False))


def inputs(gen):
    single = torch.randint(0, VOCAB, (1, 12), generator=gen)
    lengths = [12, 7, 3]
    ids = torch.zeros((3, 12), dtype=torch.long)
    mask = torch.zeros((3, 12), dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, 12 - n:] = torch.randint(0, VOCAB, (n,), generator=gen)
        mask[r, 12 - n:] = 1
    # As transformers' generate: cumulative sum of the mask, pads at position 1.
    pos = mask.cumsum(-1) - 1
    pos.masked_fill_(mask == 0, 1)
    return single, ids, mask, pos


@torch.no_grad()
def logits(model, single, ids, mask, pos):
    a = model(input_ids=single).logits[0]
    b = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    return a.float().contiguous(), b.float().contiguous()


def add_lora(model, gen, targets, r, alpha, rslora):
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0,
                     use_rslora=rslora)
    peft = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                # PEFT initialises B to zero; a zero delta would test nothing.
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return peft


def main():
    gen = torch.Generator().manual_seed(1234)
    for arch, model in models():
        out = os.path.join(ROOT, f"tiny-{arch}")
        os.makedirs(out, exist_ok=True)
        model.eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                # Larger-than-init weights so attention is far from uniform and errors show.
                std = 0.2 if "norm" in name else 0.15
                base = 1.0 if "norm" in name else 0.0
                p.copy_(base + torch.randn(p.shape, generator=gen) * std)
        model.config._attn_implementation = "eager"
        shard = "300KB" if arch == "llama" else "10GB"
        model.save_pretrained(os.path.join(out, "model"), safe_serialization=True,
                              max_shard_size=shard)
        single, ids, mask, pos = inputs(gen)
        tensors = {}
        tensors["single.base"], tensors["batch.base"] = logits(model, single, ids, mask, pos)

        peft = add_lora(copy.deepcopy(model), gen, TARGETS, 4, 8, rslora=False)
        peft.save_pretrained(os.path.join(out, "lora"))
        merged = peft.merge_and_unload()
        merged.eval()
        tensors["single.lora"], tensors["batch.lora"] = logits(merged, single, ids, mask, pos)
        if arch == "llama":
            peft2 = add_lora(merged, gen, ["q_proj", "v_proj", "down_proj"], 2, 4, rslora=True)
            peft2.save_pretrained(os.path.join(out, "lora2"))
            merged2 = peft2.merge_and_unload()
            merged2.eval()
            tensors["single.lora2"], tensors["batch.lora2"] = logits(
                merged2, single, ids, mask, pos)
        save_file(tensors, os.path.join(out, "reference.safetensors"))
        with open(os.path.join(out, "reference.json"), "w") as f:
            json.dump({"single": single.tolist(), "batch_ids": ids.tolist(),
                       "batch_mask": mask.tolist(), "batch_positions": pos.tolist()}, f)
        print(arch, "written to", out)


if __name__ == "__main__":
    main()
