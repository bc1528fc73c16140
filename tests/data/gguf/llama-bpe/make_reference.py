#!/usr/bin/env python3
"""llama.cpp as the independent reference of walsh's GGUF loading (tests/gguf_load.rs).

A random-weight llama model with grouped-query attention (d_model 32, 2 layers, 8 heads,
2 KV heads, FFN 64, context 64, the head tied to the embedding) carrying the real
`llama-bpe` vocabulary (Llama 3's 128256 tokens, from
tests/data/llama.cpp/ggml-vocab-llama-bpe.gguf), written with llama.cpp's own Python
writer (the PyPI `gguf` package 0.19.0) in three types: F16, Q8_0 and Q4_0 layer matrices.
The q and k rows are permuted as convert_hf_to_gguf.py's LlamaModel.permute does. The
embedding (128256 x 32) is Q4_0 in all three, so it is stored once.

The full files would each carry the 7.8 MB vocabulary; what is committed instead, and
what the test joins back into the very files llama.cpp ran:
- `embd.gguf`: token_embd.weight (Q4_0, 2.3 MB), no metadata but the architecture;
- `{f16,q8_0,q4_0}.weights.gguf`: the llama.* metadata and every other tensor;
- the tokenizer.* metadata comes from tests/data/llama.cpp/ggml-vocab-llama-bpe.gguf;
- `llama_cpp.json`: per type and prompt, llama.cpp's prompt ids, greedy ids and each
  step's 8 largest logits, from `llama-greedy.cpp` (llama.cpp 0c1e570, CPU, f32 KV cache).

Run (from the repository root; deterministic, seed 7):
  python3 -m venv /tmp/v && /tmp/v/bin/pip install gguf==0.19.0 numpy
  g++ -O2 -std=c++17 tests/data/gguf/llama-bpe/llama-greedy.cpp -I$LLAMA/include \
      -I$LLAMA/ggml/include -L$BUILD/bin -lllama -lggml -lggml-base \
      -Wl,-rpath,$BUILD/bin -o /tmp/llama-greedy
  /tmp/v/bin/python tests/data/gguf/llama-bpe/make_reference.py /tmp/llama-greedy
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType
from gguf.quants import quantize

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "..", ".."))
VOCAB = os.path.join(ROOT, "tests", "data", "llama.cpp", "ggml-vocab-llama-bpe.gguf")
D, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 32, 2, 8, 2, 64, 64
HD = D // HEADS
EPS, THETA = 1e-5, 500000.0
PROMPTS = ["Hello world", "The quick brown fox", " walsh, llama.cpp!"]
N_PREDICT = 8
TYPES = [(T.F16, LlamaFileType.MOSTLY_F16, "f16"), (T.Q8_0, LlamaFileType.MOSTLY_Q8_0, "q8_0"),
         (T.Q4_0, LlamaFileType.MOSTLY_Q4_0, "q4_0")]


def permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py's LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def tokenizer_fields():
    """The tokenizer.* metadata of llama.cpp's llama-bpe vocabulary file."""
    r = GGUFReader(VOCAB)
    out = []
    for name, field in r.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        out.append((name, field.contents(), vtype, sub))
    n_vocab = len(r.fields["tokenizer.ggml.tokens"].data)
    return out, n_vocab


def llama_keys(w, ftype, n_vocab):
    w.add_context_length(CONTEXT)
    w.add_embedding_length(D)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(EPS)
    w.add_rope_freq_base(THETA)
    w.add_rope_dimension_count(HD)
    w.add_vocab_size(n_vocab)
    w.add_file_type(ftype)


def layer_tensors(rng):
    """GGUF name -> f32 array (GGUF's row order: q and k permuted)."""
    def m(rows, cols, scale):
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    def norm(n, mean=1.0):
        return (mean + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t = {}
    for l in range(LAYERS):
        p = f"blk.{l}"
        t[f"{p}.attn_norm.weight"] = norm(D)
        t[f"{p}.attn_q.weight"] = permute(m(D, D, D ** -0.5), HEADS, HEADS)
        t[f"{p}.attn_k.weight"] = permute(m(KV_HEADS * HD, D, D ** -0.5), HEADS, KV_HEADS)
        t[f"{p}.attn_v.weight"] = m(KV_HEADS * HD, D, D ** -0.5)
        t[f"{p}.attn_output.weight"] = m(D, D, D ** -0.5)
        t[f"{p}.ffn_norm.weight"] = norm(D)
        t[f"{p}.ffn_gate.weight"] = m(FFN, D, D ** -0.5)
        t[f"{p}.ffn_up.weight"] = m(FFN, D, D ** -0.5)
        t[f"{p}.ffn_down.weight"] = m(D, FFN, FFN ** -0.5)
    # A final norm of about 3: logits of some 17 standard deviations, so the greedy
    # choices are far apart next to llama.cpp's 8-bit activations in quantized products.
    t["output_norm.weight"] = norm(D, 3.0)
    return t


def add(w, name, v, qtype):
    if v.ndim == 1:
        w.add_tensor(name, v)
    elif qtype == T.F16:
        w.add_tensor(name, quantize(v, qtype))
    else:
        w.add_tensor(name, quantize(v, qtype), raw_dtype=qtype)


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    greedy = sys.argv[1]
    rng = np.random.default_rng(7)
    fields, n_vocab = tokenizer_fields()
    embd = rng.standard_normal((n_vocab, D)).astype(np.float32)
    layers = layer_tensors(rng)
    w = GGUFWriter(os.path.join(HERE, "embd.gguf"), "llama")
    add(w, "token_embd.weight", embd, T.Q4_0)
    finish(w)
    reference = {}
    with tempfile.TemporaryDirectory() as tmp:
        for qtype, ftype, tag in TYPES:
            w = GGUFWriter(os.path.join(HERE, f"{tag}.weights.gguf"), "llama")
            w.add_name(f"llama-bpe-d32-{tag}")
            llama_keys(w, ftype, n_vocab)
            for name, v in layers.items():
                add(w, name, v, qtype)
            finish(w)
            # The full file llama.cpp runs: the same keys and tensors, the vocabulary, the
            # embedding first (as the test joins them).
            full = os.path.join(tmp, f"{tag}.gguf")
            w = GGUFWriter(full, "llama")
            w.add_name(f"llama-bpe-d32-{tag}")
            llama_keys(w, ftype, n_vocab)
            for name, val, vtype, sub in fields:
                w.add_key_value(name, val, vtype, sub)
            add(w, "token_embd.weight", embd, T.Q4_0)
            for name, v in layers.items():
                add(w, name, v, qtype)
            finish(w)
            out = subprocess.run([greedy, full, str(N_PREDICT), *PROMPTS], check=True,
                                 capture_output=True, text=True).stdout
            reference[tag] = [json.loads(line) for line in out.splitlines()]
    with open(os.path.join(HERE, "llama_cpp.json"), "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
