#!/usr/bin/env python3
"""Fixtures of tests/gguf_load.rs, written by an independent GGUF writer: llama.cpp's own
Python package `gguf` (gguf-py 0.19.0 from PyPI), not walsh.

A tiny random llama model with grouped-query attention (d_model 32, 2 layers, 4 heads,
2 KV heads, FFN 64, an untied head) and a small byte-level BPE vocabulary (GPT-2's 256
byte characters, 16 merges, two control tokens: 274 tokens), written as:

- `tiny-gqa-{f32,f16,q8_0,q4_0}.gguf`: the matrices in that type (the norms F32, as
  llama.cpp's converter keeps them), the q and k rows permuted as llama.cpp's
  `convert_hf_to_gguf.py` does (`LlamaModel.permute`, k by the KV heads), Q8_0 / Q4_0 by
  gguf-py's port of ggml's reference quantizers (`gguf.quants.quantize`);
- `tiny-gqa/config.json` + `tiny-gqa/model.safetensors`: the same weights in Hugging
  Face's layout (f32), which the f32 file holds exactly and the f16 file rounded to
  nearest;
- `tiny-gqa-{q8_0,q4_0}.dequant.safetensors`: the quantized files' matrices dequantized
  by gguf-py (`gguf.quants.dequantize`), un-permuted, in Hugging Face's names and layout.

Run: python3 -m venv /tmp/v && /tmp/v/bin/pip install gguf==0.19.0 numpy safetensors &&
/tmp/v/bin/python tests/data/gguf/make_fixtures.py  (deterministic: seed 20).
"""

import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter, LlamaFileType, TokenType
from gguf.quants import dequantize, quantize
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
D, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 32, 2, 4, 2, 64, 64
EPS, THETA = 1e-5, 10000.0
HD = D // HEADS


def bytes_to_unicode():
    """GPT-2's printable character for each byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def vocab():
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    merges = []
    for pair in ["Ġ t", "h e", "Ġt he", "i n", "e r", "Ġ a", "o n", "r e",
                 "Ġ s", "e n", "a t", "o r", "Ġ w", "Ġ b", "e s", "Ġ o"]:
        left, right = pair.split(" ")
        merges.append(pair)
        tokens.append(left + right)
    types = [TokenType.NORMAL] * len(tokens)
    tokens += ["<|begin_of_text|>", "<|end_of_text|>"]
    types += [TokenType.CONTROL, TokenType.CONTROL]
    return tokens, types, merges


def permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py's LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def hf_weights(rng, vocab_size):
    def m(rows, cols, scale):
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": m(vocab_size, D, 1.0)}
    for l in range(LAYERS):
        p = f"model.layers.{l}"
        w[f"{p}.input_layernorm.weight"] = norm(D)
        w[f"{p}.self_attn.q_proj.weight"] = m(D, D, D ** -0.5)
        w[f"{p}.self_attn.k_proj.weight"] = m(KV_HEADS * HD, D, D ** -0.5)
        w[f"{p}.self_attn.v_proj.weight"] = m(KV_HEADS * HD, D, D ** -0.5)
        w[f"{p}.self_attn.o_proj.weight"] = m(D, D, D ** -0.5)
        w[f"{p}.post_attention_layernorm.weight"] = norm(D)
        w[f"{p}.mlp.gate_proj.weight"] = m(FFN, D, D ** -0.5)
        w[f"{p}.mlp.up_proj.weight"] = m(FFN, D, D ** -0.5)
        w[f"{p}.mlp.down_proj.weight"] = m(D, FFN, FFN ** -0.5)
    w["model.norm.weight"] = norm(D)
    w["lm_head.weight"] = m(vocab_size, D, D ** -0.5)
    return w


GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf):
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, l, rest = hf.split(".", 3)
    return f"blk.{l}.{GGUF_NAMES[rest]}"


def write(weights, tokens, types, merges, qtype, ftype, path):
    w = GGUFWriter(path, "llama")
    w.add_name("tiny-gqa")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(D)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(EPS)
    w.add_rope_freq_base(THETA)
    w.add_rope_dimension_count(HD)
    w.add_vocab_size(len(tokens))
    w.add_file_type(ftype)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 2)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_add_bos_token(True)
    dequantized = {}
    for hf, v in weights.items():
        name = gguf_name(hf)
        if name.endswith("attn_q.weight"):
            v = permute(v, HEADS, HEADS)
        elif name.endswith("attn_k.weight"):
            v = permute(v, HEADS, KV_HEADS)
        if v.ndim == 1:
            w.add_tensor(name, v)
            continue
        q = quantize(v, qtype)
        if qtype in (T.F32, T.F16):
            w.add_tensor(name, q)
        else:
            w.add_tensor(name, q, raw_dtype=qtype)
        back = dequantize(q, qtype).reshape(v.shape)
        # Quantized row by row, so un-permuting the rows commutes with it.
        if name.endswith("attn_q.weight") or name.endswith("attn_k.weight"):
            heads = HEADS if name.endswith("attn_q.weight") else KV_HEADS
            hd2 = HD // 2
            back = back.reshape(heads, hd2, 2, -1).swapaxes(1, 2).reshape(v.shape)
        dequantized[hf] = np.ascontiguousarray(back, dtype=np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dequantized


def main():
    rng = np.random.default_rng(20)
    tokens, types, merges = vocab()
    weights = hf_weights(rng, len(tokens))
    hf_dir = os.path.join(HERE, "tiny-gqa")
    os.makedirs(hf_dir, exist_ok=True)
    save_file(weights, os.path.join(hf_dir, "model.safetensors"))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": D, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "intermediate_size": FFN, "vocab_size": len(tokens),
        "max_position_embeddings": CONTEXT, "rms_norm_eps": EPS, "rope_theta": THETA,
        "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "float32",
    }
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    for qtype, ftype, tag in [(T.F32, LlamaFileType.ALL_F32, "f32"), (T.F16, LlamaFileType.MOSTLY_F16, "f16"),
                              (T.Q8_0, LlamaFileType.MOSTLY_Q8_0, "q8_0"),
                              (T.Q4_0, LlamaFileType.MOSTLY_Q4_0, "q4_0")]:
        deq = write(weights, tokens, types, merges, qtype, ftype, os.path.join(HERE, f"tiny-gqa-{tag}.gguf"))
        if qtype in (T.Q8_0, T.Q4_0):
            save_file(deq, os.path.join(HERE, f"tiny-gqa-{tag}.dequant.safetensors"))


if __name__ == "__main__":
    main()
