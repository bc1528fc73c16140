#!/usr/bin/env python3
"""Builds small Hugging Face tokenizer.json files and the ids the `tokenizers` library
gives for a set of texts, the reference tests/tokenizer.rs checks walsh against.

Run from the repository root in a throwaway venv with `pip install tokenizers` (made with
tokenizers 0.23.3):  python3 tests/data/hf/make_fixtures.py

Each tokenizer is trained on models/shakespeare-heldout.txt (a few hundred merges, so the
files stay small), then given the shape of a real model's tokenizer.json:

- bytelevel-llama3.json: Llama 3's: Split by its expression + ByteLevel, ignore_merges,
  added tokens (three special, one not), a template that adds <|begin_of_text|>;
- bytelevel-gpt2.json: GPT-2's: ByteLevel with its own expression, <|endoftext|>;
- llama2-prepend.json: Llama 2's (legacy): byte_fallback with the 256 <0xNN> tokens in
  the vocabulary, normalizer Prepend("▁") + Replace(" ", "▁"), template "<s> $A",
  decoder Replace, ByteFallback, Fuse, Strip;
- llama2-metaspace.json: the same vocabulary with Metaspace(prepend_scheme "first") in
  place of the normalizer.

cases.json: for each tokenizer and text, the ids of encode(text, add_special_tokens) both
ways and decode(ids, skip_special_tokens=True) of the ids with specials.
"""
import json
import os

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
CORPUS = os.path.join(ROOT, "models", "shakespeare-heldout.txt")
LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def byte_level(llama3):
    tok = Tokenizer(models.BPE(ignore_merges=llama3))
    if llama3:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(pattern=__import__("tokenizers").Regex(LLAMA3), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        specials = ["<|endoftext|>"]
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([CORPUS], trainer)
    if llama3:
        tok.add_tokens(["<tool>"])  # a user-defined (not special) added token
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", bos)])
    return tok


def llama2(metaspace):
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Train on words (Metaspace with split), then give it the model's shape below.
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train([CORPUS], trainer)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    n = len(vocab)
    for b in range(256):  # the byte-fallback tokens, in the vocabulary as Llama 2 has them
        vocab[f"<0x{b:02X}>"] = n + b
    if metaspace:
        data["normalizer"] = None
        data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    else:
        data["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
        data["pre_tokenizer"] = None
    data["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    tok = Tokenizer.from_str(json.dumps(data))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


def texts():
    inp = open(os.path.join(ROOT, "tests/data/llama.cpp/ggml-vocab-llama-bpe.gguf.inp"), encoding="utf-8").read()
    out = [t for t in inp.split("\n__ggml_vocab_test__\n") if t]
    out += [
        "<|begin_of_text|>Hello<|eot_id|> world<|end_of_text|>",
        "ROMEO:\nBut soft, what light through yonder window breaks?<tool>x",
        "<s>Good morrow</s> <unk>",
        "<|endoftext|>The end.<|endoftext|>",
        " leading and trailing  ",
        "tabs\tand\r\nnewlines\n\n\n  indented",
        "naïve café — “quotes” 12345 ١٢٣ 中文 😀🤖",
        "don'T it's WE'LL they've",
        "",
    ]
    return out


def main():
    tokenizers = {
        "bytelevel-llama3": byte_level(True),
        "bytelevel-gpt2": byte_level(False),
        "llama2-prepend": llama2(False),
        "llama2-metaspace": llama2(True),
    }
    cases = {}
    for name, tok in tokenizers.items():
        tok.save(os.path.join(HERE, f"{name}.json"), pretty=False)
        # Reload what was written: the reference is the file, not the object.
        tok = Tokenizer.from_file(os.path.join(HERE, f"{name}.json"))
        cases[name] = []
        for text in texts():
            with_special = tok.encode(text, add_special_tokens=True).ids
            cases[name].append({
                "text": text,
                "ids": with_special,
                "ids_no_special": tok.encode(text, add_special_tokens=False).ids,
                "decoded": tok.decode(with_special, skip_special_tokens=True),
            })
    # One case a line, so a change reads as a diff of the cases it touches.
    with open(os.path.join(HERE, "cases.json"), "w", encoding="utf-8") as f:
        version = __import__("tokenizers").__version__
        f.write(f'{{"tokenizers_version": "{version}", "cases": {{\n')
        blocks = []
        for name, list_ in cases.items():
            lines = ",\n".join(json.dumps(c, ensure_ascii=False) for c in list_)
            blocks.append(f'"{name}": [\n{lines}\n]')
        f.write(",\n".join(blocks))
        f.write("\n}}\n")

main()
