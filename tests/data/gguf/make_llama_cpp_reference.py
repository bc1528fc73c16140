#!/usr/bin/env python3
"""llama.cpp as the independent reference of walsh's GGUF loading (tests/gguf_load.rs).

For each of two real vocabularies, a random-weight llama model with grouped-query
attention (d_model 32, 2 layers, 8 heads, 2 KV heads, FFN 64, context 64, the head tied to
the embedding), written with llama.cpp's own Python writer (the PyPI `gguf` package
0.19.0) in three types: F16, Q8_0 and Q4_0 layer matrices. The q and k rows are permuted
as convert_hf_to_gguf.py's LlamaModel.permute does. The embedding (n_vocab x 32) is Q4_0
in all three, so it is stored once. The vocabularies, from tests/data/llama.cpp/:
- `llama-bpe`: Llama 3's 128256 tokens (`gpt2` BPE), rope theta 500000, seed 7;
- `llama-spm`: Llama 2's 32000 tokens (`llama` SentencePiece, BOS added), rope theta 10000,
  seed 13: the first seed from 7 whose greedy choices are all some 3% of the largest logit
  apart, in every run (seed 7 had a tie within 0.2% at a first step, which llama.cpp's
  rounding of the Q4_0 file decided the other way than exact math).
Each has its folder, tests/data/gguf/<vocabulary>/, and its own generator (the embedding
drawn first, then the layers).

The full files would each carry the vocabulary (7.8 MB for llama-bpe); what is committed
instead, and what the test joins back into the very files llama.cpp ran:
- `embd.gguf`: token_embd.weight (Q4_0: 2.3 MB llama-bpe, 0.6 MB llama-spm), no metadata
  but the architecture;
- `{f16,q8_0,q4_0}.weights.gguf`: the llama.* metadata and every other tensor;
- the tokenizer.* metadata comes from tests/data/llama.cpp/ggml-vocab-<vocabulary>.gguf;
- `llama_cpp.json`: llama.cpp's prompt ids, greedy ids and each step's 8 largest logits,
  from `llama-greedy.cpp` (llama.cpp 0c1e570, CPU, f32 KV cache, flash attention off: on
  the CPU llama.cpp turns it on by itself and it casts the f32 cache to f16), one list of
  cases (one per prompt) under each key:
  - `f16`, `q8_0`, `q4_0`: the file of that type. llama.cpp's CPU products round their
    activations to f16 (F16 weights) or to 8-bit Q8_0 blocks (Q8_0 and Q4_0 weights, and
    the tied Q4_0 head in every file), which moves its logits by up to 8e-3 of the
    step's largest logit;
  - `f16/f32`, `q8_0/f32`, `q4_0/f32`: that file's F32 twin, every tensor dequantized to
    F32 by gguf-py (`gguf.quants.dequantize`: f16 scale x integer level is exact in f32,
    so these are the values walsh's loader dequantizes to), the same metadata but
    `general.file_type` ALL_F32. llama.cpp then computes in f32 throughout: the exact-math
    reference of the quantized file: the script checks it against its own float64 NumPy
    forward pass (`exact_logits`; measured within 4e-7 of the step's largest logit). The
    twins (16 MB for llama-bpe) are not committed. Their greedy tokens are the quantized
    files' (the test checks both).

Run (from the repository root; deterministic; the Vulkan devices of a Vulkan build of
llama.cpp are hidden, GGML_VK_VISIBLE_DEVICES empty, so that only the CPU runs):
  python3 -m venv /tmp/v && /tmp/v/bin/pip install gguf==0.19.0 numpy
  g++ -O2 -std=c++17 tests/data/gguf/llama-greedy.cpp -I$LLAMA/include \
      -I$LLAMA/ggml/include -L$BUILD/bin -lllama -lggml -lggml-base \
      -Wl,-rpath,$BUILD/bin -o /tmp/llama-greedy
  /tmp/v/bin/python tests/data/gguf/make_llama_cpp_reference.py /tmp/llama-greedy [VOCABULARY...]
(every vocabulary when none is named).
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType
from gguf.quants import dequantize, quantize

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
# Vocabulary -> (rope theta, seed).
VOCABS = {"llama-bpe": (500000.0, 7), "llama-spm": (10000.0, 13)}
D, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 32, 2, 8, 2, 64, 64
HD = D // HEADS
EPS = 1e-5
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


def tokenizer_fields(vocab):
    """The tokenizer.* metadata of llama.cpp's vocabulary file `vocab`."""
    r = GGUFReader(os.path.join(ROOT, "tests", "data", "llama.cpp", f"ggml-vocab-{vocab}.gguf"))
    out = []
    for name, field in r.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        out.append((name, field.contents(), vtype, sub))
    n_vocab = len(r.fields["tokenizer.ggml.tokens"].data)
    return out, n_vocab


def llama_keys(w, ftype, n_vocab, theta):
    w.add_context_length(CONTEXT)
    w.add_embedding_length(D)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(EPS)
    w.add_rope_freq_base(theta)
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


def add(w, name, v, qtype, f32=False):
    """`v` stored as `qtype` (vectors stay F32); with `f32`, its stored values
    dequantized back to F32 (the F32 twin)."""
    if v.ndim == 1:
        w.add_tensor(name, v)
    elif f32:
        w.add_tensor(name, dequantize(quantize(v, qtype), qtype).astype(np.float32))
    elif qtype == T.F16:
        w.add_tensor(name, quantize(v, qtype))
    else:
        w.add_tensor(name, quantize(v, qtype), raw_dtype=qtype)


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def run_greedy(greedy, path):
    # Only the CPU backend: no Vulkan device (llama-greedy offloads no layer anyway).
    env = dict(os.environ, GGML_VK_VISIBLE_DEVICES="")
    out = subprocess.run([greedy, path, str(N_PREDICT), *PROMPTS], check=True,
                         capture_output=True, text=True, env=env).stdout
    return [json.loads(line) for line in out.splitlines()]


def stored(v, qtype):
    """The values of `v` as stored in `qtype` (vectors: F32), in float64."""
    if v.ndim == 1:
        return v.astype(np.float64)
    return dequantize(quantize(v, qtype), qtype).astype(np.float64)


def exact_logits(embd, w, theta, tokens):
    """Each position's logits in float64 (NumPy), from the stored weights `w` and the
    embedding `embd`: the twin's math without rounding, to check llama.cpp's F32 run."""
    def rms(x, g):
        return x / np.sqrt(np.mean(x * x) + EPS) * g

    def rope(v, pos):  # GGUF's order (q and k permuted): adjacent pairs rotate
        a = pos * theta ** (-np.arange(0, HD, 2) / HD)
        x0, x1 = v[:, 0::2], v[:, 1::2]
        out = np.empty_like(v)
        out[:, 0::2], out[:, 1::2] = x0 * np.cos(a) - x1 * np.sin(a), x0 * np.sin(a) + x1 * np.cos(a)
        return out

    cache = [([], []) for _ in range(LAYERS)]
    out = []
    for pos, t in enumerate(tokens):
        x = embd[t].copy()
        for l, (ks, vs) in enumerate(cache):
            p = f"blk.{l}"
            h = rms(x, w[f"{p}.attn_norm.weight"])
            q = rope((w[f"{p}.attn_q.weight"] @ h).reshape(HEADS, HD), pos)
            ks.append(rope((w[f"{p}.attn_k.weight"] @ h).reshape(KV_HEADS, HD), pos))
            vs.append((w[f"{p}.attn_v.weight"] @ h).reshape(KV_HEADS, HD))
            k, v = np.stack(ks), np.stack(vs)
            att = np.empty((HEADS, HD))
            for head in range(HEADS):
                g = head // (HEADS // KV_HEADS)
                s = k[:, g] @ q[head] / np.sqrt(HD)
                e = np.exp(s - s.max())
                att[head] = e / e.sum() @ v[:, g]
            x = x + w[f"{p}.attn_output.weight"] @ att.reshape(-1)
            h = rms(x, w[f"{p}.ffn_norm.weight"])
            gate = w[f"{p}.ffn_gate.weight"] @ h
            x = x + w[f"{p}.ffn_down.weight"] @ (gate / (1 + np.exp(-gate)) * (w[f"{p}.ffn_up.weight"] @ h))
        out.append(embd @ rms(x, w["output_norm.weight"]))
    return out


def check_exact(cases, embd, w, theta):
    """llama.cpp's F32-twin run is f32 math: its top-8 logits within 1e-5 of the step's
    largest of the float64 ones, and the same greedy tokens."""
    worst = 0.0
    for case in cases:
        n = len(case["prompt_ids"])
        logits = exact_logits(embd, w, theta, case["prompt_ids"] + case["tokens"][:-1])[n - 1:]
        assert [int(np.argmax(l)) for l in logits] == case["tokens"], case["prompt"]
        for step, top in enumerate(case["top"]):
            for i, l in top:
                worst = max(worst, abs(logits[step][i] - l) / abs(top[0][1]))
    assert worst < 1e-5, worst
    return worst


def make(vocab, greedy, tmp):
    here = os.path.join(HERE, vocab)
    os.makedirs(here, exist_ok=True)
    theta, seed = VOCABS[vocab]
    rng = np.random.default_rng(seed)
    fields, n_vocab = tokenizer_fields(vocab)
    embd = rng.standard_normal((n_vocab, D)).astype(np.float32)
    layers = layer_tensors(rng)
    w = GGUFWriter(os.path.join(here, "embd.gguf"), "llama")
    add(w, "token_embd.weight", embd, T.Q4_0)
    finish(w)
    reference = {}
    for qtype, ftype, tag in TYPES:
        w = GGUFWriter(os.path.join(here, f"{tag}.weights.gguf"), "llama")
        w.add_name(f"{vocab}-d32-{tag}")
        llama_keys(w, ftype, n_vocab, theta)
        for name, v in layers.items():
            add(w, name, v, qtype)
        finish(w)
        # The full file llama.cpp runs: the same keys and tensors, the vocabulary, the
        # embedding first (as the test joins them); then its F32 twin.
        for key, f32, file_type in [(tag, False, ftype),
                                    (f"{tag}/f32", True, LlamaFileType.ALL_F32)]:
            full = os.path.join(tmp, f"{vocab}-{tag}{'-f32' if f32 else ''}.gguf")
            w = GGUFWriter(full, "llama")
            w.add_name(f"{vocab}-d32-{tag}")
            llama_keys(w, file_type, n_vocab, theta)
            for name, val, vtype, sub in fields:
                w.add_key_value(name, val, vtype, sub)
            add(w, "token_embd.weight", embd, T.Q4_0, f32)
            for name, v in layers.items():
                add(w, name, v, qtype, f32)
            finish(w)
            reference[key] = run_greedy(greedy, full)
            os.remove(full)
        exact_embd = stored(embd, T.Q4_0)
        exact_layers = {name: stored(v, qtype) for name, v in layers.items()}
        worst = check_exact(reference[f"{tag}/f32"], exact_embd, exact_layers, theta)
        print(f"{vocab} {tag}/f32: llama.cpp within {worst:.1e} of the float64 logits")
    with open(os.path.join(here, "llama_cpp.json"), "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")


def main():
    greedy = sys.argv[1]
    vocabs = sys.argv[2:] or list(VOCABS)
    with tempfile.TemporaryDirectory() as tmp:
        for vocab in vocabs:
            make(vocab, greedy, tmp)


if __name__ == "__main__":
    main()
