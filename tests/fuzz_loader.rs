//! Mutation fuzzing, on stable Rust, of everything walsh parses from files and command
//! lines:
//!
//! - **model**: `config.json` + `model.safetensors` through [`Model::from_bytes`], the code
//!   [`Model::load`] runs once it has read the two files; a model that loads decodes a
//!   token on the CPU;
//! - **report**: benchmark reports through [`Report::from_json`] (`walsh bench merge`);
//! - **gguf**: GGUF files through walsh's reader ([`Gguf::parse`]) and, when one parses,
//!   the model loader (`gguf_load::model_from_gguf`; a model that loads decodes a token on
//!   the CPU, and its tokenizer is checked against its vocabulary) and the tokenizer it
//!   describes ([`Tokenizer::from_gguf`]) encoding, decoding and streaming a text;
//! - **text**: prompts and texts through `encode_text`, [`Utf8Stream`], `generate` and
//!   `evaluate` on a tiny CPU model, with sampling settings taken from the input; and
//!   `--adapter` selectors;
//! - **request**: `walsh serve`'s `POST /v1/completions` bodies through
//!   [`CompletionRequest::parse`] and, where one parses, each choice's [`Output`] fed the
//!   input's bytes as tokens (the streamed pieces must add up to the final text, which must
//!   hold no stop string).
//!
//! Seeds: the shipped models (`models/*/`), small random models of every variant in f32
//! and f16, the committed reports (`bench-results/*.json`), completions bodies, and GGUF
//! files: small models of several variants as `walsh export --gguf` writes them, a GQA
//! model by llama.cpp's Python writer (`tests/data/gguf/`), a tiny hand-made BPE
//! vocabulary, and llama.cpp's Llama 2 vocabulary (`tests/data/llama.cpp/`). Mutations: bit flips,
//! interesting bytes and integers, inserts, deletes, duplicated ranges, truncations;
//! safetensors-aware edits of the header length, of the header JSON (dtypes, shapes,
//! offsets, names, metadata) and of the data (NaN and infinity patterns); JSON-aware edits
//! of configs and reports (extreme numbers, wrong types, missing and unknown keys);
//! GGUF-aware edits of counts, lengths and type codes (interesting integers at the fields'
//! places, found by walking the file).
//! Inputs whose outcome (error kind and message shape) is new join the pool, a crude
//! stand-in for coverage feedback.
//!
//! Every execution runs inside `catch_unwind` under a global allocator that flags any
//! single allocation larger than the input justifies ([`allowance`]); one beyond
//! [`ABORT_BYTES`] saves the input and aborts before the system would. A failing input is
//! saved under `target/tmp/fuzz-failures/` and replays with `WALSH_FUZZ_REPLAY=FILE`.
//!
//! `cargo test --test fuzz_loader` runs a fixed budget from a fixed seed (part of
//! `cargo xtask test`); `WALSH_FUZZ_MINUTES=N` runs for N minutes with a progress line
//! (what `cargo xtask fuzz --minutes N` does); `WALSH_FUZZ_SEED=S` picks the seed;
//! `WALSH_FUZZ_OUTCOMES=1` lists the distinct outcomes reached (a view of coverage);
//! `WALSH_FUZZ_TARGETS=request,text` runs only those targets.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io::Write as _;
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use walsh::bench::Report;
use walsh::gguf::Gguf;
use walsh::gpu::AdapterSelector;
use walsh::model::batch::Finish;
use walsh::model::chat;
use walsh::model::completion::{CompletionRequest, Endpoint, Output, Update};
use walsh::model::cpu::CpuDecoder;
use walsh::model::eval::evaluate;
use walsh::model::generate::{CpuBatch, GenerateOptions, Utf8Stream, encode_text, generate};
use walsh::model::gguf::{GgufWeights, gguf_bytes};
use walsh::model::gguf_load;
use walsh::model::init::{FileTensor, random_tensors, safetensors_bytes};
use walsh::model::weights::Model;
use walsh::model::{AttnOutput, Config, Query};
use walsh::ops::attention::KvFormat;
use walsh::ops::sample::SamplingParams;
use walsh::tokenizer::Tokenizer;

// ---- The allocation guard -------------------------------------------------------------

/// A single allocation beyond this many bytes aborts at once (after saving the input):
/// the fuzzed inputs are at most a few MiB, so nothing justifies it, and the system
/// might not survive it.
const ABORT_BYTES: usize = 1 << 30;

/// What one execution may allocate at once: twice its input (a loaded tensor is as large
/// as its bytes in the file) plus 1 MiB for fixed-size tables.
fn allowance(input_len: usize) -> usize {
    2 * input_len + (1 << 20)
}

/// A GGUF input's allowance: a vocabulary's lookup table holds each token's string and id
/// in a hash map of up to twice the entries, some 10 bytes of table per byte of a file of
/// one-byte tokens, so 16 times the input (plus the same 1 MiB).
fn gguf_allowance(input_len: usize) -> usize {
    16 * input_len + (1 << 20)
}

thread_local! {
    /// The current execution's allowance; usize::MAX outside executions.
    static BOUND: Cell<usize> = const { Cell::new(usize::MAX) };
    /// The largest allocation over the bound in the current execution.
    static OVER: Cell<usize> = const { Cell::new(0) };
    /// The input being run, for the abort path: (pointer, length).
    static INPUT: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Where an input that would abort the process is saved (short, so opening it does not
/// allocate).
const ABORT_INPUT: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/fuzz-abort.bin");

struct Guard;

impl Guard {
    fn check(size: usize) {
        let bound = BOUND.try_with(Cell::get).unwrap_or(usize::MAX);
        if size <= bound {
            return;
        }
        let _ = OVER.try_with(|o| o.set(o.get().max(size)));
        if size > ABORT_BYTES {
            // No allocation from here on: std opens short paths from a stack buffer and
            // stderr is unbuffered.
            BOUND.with(|b| b.set(usize::MAX));
            let (ptr, len) = INPUT.with(Cell::get);
            if let Ok(mut f) = std::fs::File::create(ABORT_INPUT) {
                // SAFETY: INPUT points at the live input of the running execution.
                let _ = f.write_all(unsafe { std::slice::from_raw_parts(ptr as *const u8, len) });
            }
            let mut err = std::io::stderr();
            let _ = err.write_all(b"fuzz: an allocation beyond 1 GiB; the input is in ");
            let _ = err.write_all(ABORT_INPUT.as_bytes());
            let _ = err.write_all(b"\n");
            std::process::abort();
        }
    }
}

// SAFETY: forwards to the system allocator; `check` never allocates before aborting.
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GUARD: Guard = Guard;

// ---- Randomness -----------------------------------------------------------------------

/// SplitMix64: small, fast, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const INTERESTING_U64: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    15,
    16,
    255,
    256,
    4095,
    4096,
    65535,
    65536,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    1 << 40,
    (1 << 63) - 1,
    1 << 63,
    u64::MAX - 7,
    u64::MAX,
];

// ---- Byte-level mutations -------------------------------------------------------------

fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, range: std::ops::Range<usize>) {
    let (lo, hi) = (range.start.min(data.len()), range.end.min(data.len()));
    let at = |rng: &mut Rng| lo + rng.below(hi - lo + 1);
    match rng.below(9) {
        0 if hi > lo => {
            let i = lo + rng.below(hi - lo);
            data[i] ^= 1 << rng.below(8);
        }
        1 if hi > lo => {
            let i = lo + rng.below(hi - lo);
            data[i] = *rng.pick(&[
                0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'}', b'[', b']', b',', b':', b'-', b'0', b'9',
                b'e', b'.', b'\\', b'\n',
            ]);
        }
        2 => {
            let i = at(rng);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(i..i, bytes);
        }
        3 if hi > lo => {
            let i = lo + rng.below(hi - lo);
            let n = 1 + rng.below((hi - i).min(64));
            data.drain(i..i + n);
        }
        4 if hi > lo => {
            let i = lo + rng.below(hi - lo);
            let n = 1 + rng.below((hi - i).min(64));
            let chunk = data[i..i + n].to_vec();
            let j = at(rng);
            data.splice(j..j, chunk);
        }
        5 => {
            let i = at(rng);
            data.truncate(i);
        }
        6 if hi >= lo + 8 => {
            let i = lo + rng.below(hi - lo - 7);
            let v = *rng.pick(INTERESTING_U64);
            let width = *rng.pick(&[2usize, 4, 8]);
            data[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
        }
        7 if hi >= lo + 4 => {
            // A non-finite float where the data has values.
            let i = lo + (rng.below(hi - lo - 3) & !1);
            let (nan, inf) = (f32::NAN.to_le_bytes(), f32::INFINITY.to_le_bytes());
            // f16 NaN and minus infinity.
            let (half_nan, half_inf) = (0x7e00u16.to_le_bytes(), 0xfc00u16.to_le_bytes());
            let patterns: [&[u8]; 4] = [&nan, &inf, &half_nan, &half_inf];
            let pattern = patterns[rng.below(4)];
            data[i..i + pattern.len()].copy_from_slice(pattern);
        }
        _ => {
            let extra = rng.below(64);
            data.extend((0..extra).map(|_| rng.next() as u8));
        }
    }
}

// ---- JSON-aware mutations -------------------------------------------------------------

fn interesting_json(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    match rng.below(14) {
        0 => json!(*rng.pick(INTERESTING_U64)),
        1 => json!(-(rng.below(3) as i64) - 1),
        2 => json!(0.5),
        3 => json!(1e300),
        4 => json!(-1e-300),
        5 => json!(null),
        6 => json!(true),
        7 => json!("64"),
        8 => json!([]),
        9 => json!({}),
        10 => json!(*rng.pick(&[
            12u64,
            20,
            28,
            36,
            48,
            768,
            32768,
            32769,
            1 << 20,
            (1 << 20) + 1
        ])),
        11 => json!(rng.next() >> rng.below(64)),
        12 => json!(""),
        _ => json!(*rng.pick(&[
            "dense",
            "hadamard",
            "identity",
            "residual_mlp",
            "Dense",
            "x"
        ])),
    }
}

/// Edits one place in a JSON document: a value replaced, a key removed, added or
/// renamed, an array shortened or extended.
fn mutate_json(rng: &mut Rng, value: &mut serde_json::Value, depth: usize) {
    use serde_json::Value;
    match value {
        Value::Object(map) if !map.is_empty() && (depth < 4 || rng.chance(2)) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = rng.pick(&keys).clone();
            match rng.below(6) {
                0 => {
                    map.remove(&key);
                }
                1 => {
                    map.insert(key, interesting_json(rng));
                }
                2 => {
                    let v = map.remove(&key).unwrap_or_default();
                    map.insert(format!("{key}{}", rng.below(3)), v);
                }
                3 => {
                    map.insert(format!("unknown_{}", rng.below(4)), interesting_json(rng));
                }
                _ => {
                    if let Some(v) = map.get_mut(&key) {
                        mutate_json(rng, v, depth + 1);
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() && rng.chance(2) => match rng.below(4) {
            0 => {
                items.pop();
            }
            1 => {
                let v = items[rng.below(items.len())].clone();
                items.push(v);
            }
            2 => items.reverse(),
            _ => {
                let i = rng.below(items.len());
                mutate_json(rng, &mut items[i], depth + 1);
            }
        },
        _ => *value = interesting_json(rng),
    }
}

fn mutate_json_text(rng: &mut Rng, text: &[u8]) -> Vec<u8> {
    if let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(text)
        && !rng.chance(4)
    {
        for _ in 0..1 + rng.below(3) {
            mutate_json(rng, &mut value, 0);
        }
        return serde_json::to_vec(&value).unwrap_or_default();
    }
    let mut bytes = text.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = bytes.len();
        mutate_bytes(rng, &mut bytes, 0..len);
    }
    bytes
}

// ---- safetensors-aware mutations ------------------------------------------------------

fn header_len(file: &[u8]) -> Option<usize> {
    let n = u64::from_le_bytes(file.get(..8)?.try_into().ok()?) as usize;
    (n <= file.len() - 8).then_some(n)
}

fn mutate_safetensors(rng: &mut Rng, file: &[u8]) -> Vec<u8> {
    let Some(n) = header_len(file) else {
        let mut bytes = file.to_vec();
        let len = bytes.len();
        mutate_bytes(rng, &mut bytes, 0..len);
        return bytes;
    };
    let (header, data) = (&file[8..8 + n], &file[8 + n..]);
    match rng.below(8) {
        // The header length: off by a little, the whole file, or extreme.
        0 => {
            let mut out = file.to_vec();
            let claim = match rng.below(3) {
                0 => (n as u64)
                    .wrapping_add(rng.below(17) as u64)
                    .wrapping_sub(8),
                1 => (file.len() as u64).wrapping_sub(rng.below(16) as u64),
                _ => *rng.pick(INTERESTING_U64),
            };
            out[..8].copy_from_slice(&claim.to_le_bytes());
            out
        }
        // The header JSON: structure edits, then (usually) a consistent length.
        1..=3 => {
            let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(header) else {
                return file.to_vec();
            };
            for _ in 0..1 + rng.below(3) {
                mutate_header(rng, &mut value);
            }
            let mut header = serde_json::to_vec(&value).unwrap_or_default();
            if rng.chance(2) {
                while header.len() % 8 != 0 {
                    header.push(b' ');
                }
            }
            let claim = if rng.chance(8) { n } else { header.len() };
            let mut out = (claim as u64).to_le_bytes().to_vec();
            out.extend(&header);
            out.extend(data);
            out
        }
        // The data only: a loaded model must still be checked value by value.
        4 | 5 => {
            let mut out = file.to_vec();
            let len = out.len();
            for _ in 0..1 + rng.below(4) {
                mutate_bytes(rng, &mut out, 8 + n..len);
            }
            out
        }
        // Anywhere.
        _ => {
            let mut out = file.to_vec();
            for _ in 0..1 + rng.below(4) {
                let len = out.len();
                let range = if rng.chance(2) { 0..8 + n } else { 0..len };
                mutate_bytes(rng, &mut out, range);
            }
            out
        }
    }
}

/// One edit of a safetensors header: a tensor's dtype, shape or offsets, a tensor removed,
/// duplicated or renamed, metadata added.
fn mutate_header(rng: &mut Rng, header: &mut serde_json::Value) {
    use serde_json::{Value, json};
    let Value::Object(map) = header else {
        *header = interesting_json(rng);
        return;
    };
    let names: Vec<String> = map
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    if names.is_empty() || rng.chance(12) {
        map.insert(
            "__metadata__".into(),
            if rng.chance(2) {
                json!({"format": "pt", "x": "y"})
            } else {
                interesting_json(rng)
            },
        );
        return;
    }
    let name = rng.pick(&names).clone();
    match rng.below(10) {
        0 => {
            map.remove(&name);
        }
        1 => {
            let v = map[&name].clone();
            let other = rng.pick(&names).clone();
            map.insert(
                if rng.chance(2) {
                    other
                } else {
                    format!("{name}.copy")
                },
                v,
            );
        }
        2 => {
            let v = map.remove(&name).unwrap_or_default();
            let renamed = name.replacen(char::is_numeric, "7", 1);
            map.insert(renamed, v);
        }
        _ => {
            let Some(Value::Object(t)) = map.get_mut(&name) else {
                return;
            };
            match rng.below(4) {
                0 => {
                    let dtype = *rng.pick(&[
                        "F32", "F16", "BF16", "F64", "I8", "U8", "I16", "I32", "I64", "U64",
                        "BOOL", "F8_E4M3", "F8_E5M2", "F4", "f32", "",
                    ]);
                    t.insert("dtype".into(), json!(dtype));
                }
                1 => {
                    if let Some(Value::Array(shape)) = t.get_mut("shape") {
                        match rng.below(5) {
                            0 => {
                                shape.pop();
                            }
                            1 => shape.push(json!(*rng.pick(INTERESTING_U64))),
                            2 => shape.reverse(),
                            _ if !shape.is_empty() => {
                                let i = rng.below(shape.len());
                                shape[i] = json!(*rng.pick(INTERESTING_U64));
                            }
                            _ => shape.push(json!(1)),
                        }
                    } else {
                        t.insert("shape".into(), interesting_json(rng));
                    }
                }
                2 => {
                    if let Some(Value::Array(offsets)) = t.get_mut("data_offsets")
                        && offsets.len() == 2
                    {
                        let (a, b) = (
                            offsets[0].as_u64().unwrap_or(0),
                            offsets[1].as_u64().unwrap_or(0),
                        );
                        let (a, b) = match rng.below(6) {
                            0 => (b, a),
                            1 => (a, b.wrapping_add(1 + rng.below(8) as u64)),
                            2 => (a.wrapping_sub(1), b),
                            3 => (a, *rng.pick(INTERESTING_U64)),
                            4 => (*rng.pick(INTERESTING_U64), b),
                            _ => (a, a),
                        };
                        offsets[0] = json!(a);
                        offsets[1] = json!(b);
                    } else {
                        t.insert("data_offsets".into(), interesting_json(rng));
                    }
                }
                _ => {
                    let key = rng.pick(&["dtype", "shape", "data_offsets"]).to_string();
                    if rng.chance(2) {
                        t.remove(&key);
                    } else {
                        t.insert(key, interesting_json(rng));
                    }
                }
            }
        }
    }
}

// ---- GGUF-aware mutations -----------------------------------------------------------------

/// The byte offsets of a GGUF file's count, length and type fields (u64 counts and
/// lengths, u32 type codes and dimension counts), found by walking it as far as it parses.
fn gguf_fields(file: &[u8]) -> Vec<(usize, usize)> {
    let mut fields = vec![(4, 4), (8, 8), (16, 8)];
    let u32_at = |at: usize| {
        file.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |at: usize| {
        file.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    let (Some(n_tensors), Some(n_kv)) = (u64_at(8), u64_at(16)) else {
        fields.retain(|&(at, w)| at + w <= file.len());
        return fields;
    };
    let mut at = 24;
    let string = |at: &mut usize, fields: &mut Vec<(usize, usize)>| -> Option<()> {
        let n = u64_at(*at)? as usize;
        fields.push((*at, 8));
        *at = n
            .checked_add(8)
            .and_then(|m| at.checked_add(m))
            .filter(|&e| e <= file.len())?;
        Some(())
    };
    let mut walk = || -> Option<()> {
        for _ in 0..n_kv.min(4096) {
            string(&mut at, &mut fields)?;
            let ty = u32_at(at)?;
            fields.push((at, 4));
            at += 4;
            let (elem, count) = if ty == 9 {
                fields.push((at, 4));
                fields.push((at + 4, 8));
                let r = (u32_at(at)?, u64_at(at + 4)?);
                at += 12;
                r
            } else {
                (ty, 1)
            };
            let size = match elem {
                0 | 1 | 7 => 1,
                2 | 3 => 2,
                4..=6 => 4,
                10..=12 => 8,
                8 => 0,
                _ => return None,
            };
            if size == 0 {
                for _ in 0..count.min(1 << 20) {
                    string(&mut at, &mut fields)?;
                }
            } else {
                at = (count as usize)
                    .checked_mul(size)
                    .and_then(|m| at.checked_add(m))
                    .filter(|&e| e <= file.len())?;
            }
        }
        for _ in 0..n_tensors.min(4096) {
            string(&mut at, &mut fields)?;
            let dims = u32_at(at)? as usize;
            fields.push((at, 4));
            at += 4;
            for _ in 0..dims.min(8) {
                fields.push((at, 8));
                at += 8;
            }
            fields.push((at, 4));
            fields.push((at + 4, 8));
            at += 12;
        }
        Some(())
    };
    walk();
    fields.retain(|&(at, w)| at + w <= file.len());
    fields
}

fn mutate_gguf(rng: &mut Rng, file: &[u8]) -> Vec<u8> {
    let mut out = file.to_vec();
    for _ in 0..1 + rng.below(3) {
        let fields = gguf_fields(&out);
        match rng.below(4) {
            // A count, length or type code: off by a little, or extreme.
            0 | 1 if !fields.is_empty() => {
                let (at, width) = *rng.pick(&fields);
                let old = out[at..at + width]
                    .iter()
                    .rev()
                    .fold(0u64, |v, &b| (v << 8) | b as u64);
                let new = match rng.below(3) {
                    0 => old.wrapping_add(rng.below(5) as u64).wrapping_sub(2),
                    1 => rng.below(16) as u64,
                    _ => *rng.pick(INTERESTING_U64),
                };
                out[at..at + width].copy_from_slice(&new.to_le_bytes()[..width]);
            }
            // Bytes of the metadata (strings: token texts, keys, values).
            2 => {
                let end = fields.last().map_or(out.len(), |&(at, w)| at + w);
                mutate_bytes(rng, &mut out, 0..end);
            }
            _ => {
                let len = out.len();
                mutate_bytes(rng, &mut out, 0..len);
            }
        }
    }
    out
}

// ---- Seeds ----------------------------------------------------------------------------

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// (config.json, model.safetensors) of a small random model.
fn small_model(config: &Config, f16: bool, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let encode = if f16 {
        FileTensor::f16
    } else {
        FileTensor::f32
    };
    let files: Vec<FileTensor> = random_tensors(config, seed)
        .iter()
        .map(|(name, shape, values)| encode(name, shape, values))
        .collect();
    let file = safetensors_bytes(&files).unwrap();
    (serde_json::to_vec_pretty(config).unwrap(), file)
}

struct Seeds {
    /// Small random models: most executions start here (fast to parse).
    small: Vec<(Vec<u8>, Vec<u8>)>,
    /// The shipped models (a few MiB each): one execution in sixteen.
    shipped: Vec<(Vec<u8>, Vec<u8>)>,
    reports: Vec<Vec<u8>>,
    texts: Vec<Vec<u8>>,
    requests: Vec<Vec<u8>>,
    /// The model the text target decodes with.
    tiny: Model,
    /// Small GGUF files: exported models and a hand-made BPE vocabulary.
    ggufs: Vec<Vec<u8>>,
    /// llama.cpp's Llama 2 vocabulary (700 KiB): one GGUF execution in sixteen.
    llama_vocab: Vec<u8>,
}

fn seeds() -> Seeds {
    let mut small = Vec::new();
    let variants = [
        (32, 4, AttnOutput::Hadamard, Query::Dense, false, true),
        (32, 4, AttnOutput::Dense, Query::Dense, false, false),
        (32, 2, AttnOutput::Hadamard, Query::Identity, true, true),
        (
            48,
            4,
            AttnOutput::Hadamard,
            Query::ResidualMlp,
            false,
            false,
        ),
        (16, 2, AttnOutput::Dense, Query::ResidualMlp, true, true),
    ];
    for (i, &(d, heads, o, q, tied, f16)) in variants.iter().enumerate() {
        let config = Config {
            tie_word_embeddings: tied,
            attn_output: o,
            query: q,
            ..common::small_config(d, 1, heads, 16)
        };
        small.push(small_model(&config, f16, i as u64));
    }
    let mut shipped = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("models"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.safetensors").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        shipped.push((
            std::fs::read(dir.join("config.json")).unwrap(),
            std::fs::read(dir.join("model.safetensors")).unwrap(),
        ));
    }
    assert!(!shipped.is_empty(), "no shipped models to seed from");
    let mut reports: Vec<Vec<u8>> = std::fs::read_dir(root().join("bench-results"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    reports.sort();
    let texts = vec![
        b"ROMEO.".to_vec(),
        "añ€😀b\nJULIET.".as_bytes().to_vec(),
        b"\xff\xfe\x00 to be\n\n".to_vec(),
        b"vulkan".to_vec(),
    ];
    let requests = [
        r#"{"model": "m", "prompt": "ROMEO.", "max_tokens": 40, "temperature": 0}"#,
        r#"{"prompt": ["a", "bé", "😀"], "stream": true, "stop": ["\n", "é"], "echo": true}"#,
        r#"{"prompt": "x", "temperature": 0.8, "top_p": 0.9, "top_k": 5, "seed": 7, "n": 1}"#,
        r#"{"prompt": "stop here", "stop": "st", "max_tokens": 100, "logprobs": null}"#,
        r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_completion_tokens": 5}"#,
    ]
    .map(|r| r.as_bytes().to_vec())
    .to_vec();
    let (config, weights) = &small[0];
    let tiny = Model::from_bytes(Path::new("<tiny>"), config, weights).unwrap();
    // The dense/dense small model, exported.
    let (config, weights) = &small[1];
    let dense = Model::from_bytes(Path::new("<dense>"), config, weights).unwrap();
    let mut ggufs: Vec<Vec<u8>> = [GgufWeights::F32, GgufWeights::Q8_0]
        .into_iter()
        .map(|w| gguf_bytes(&dense, "fuzz", w).unwrap())
        .collect();
    // walsh's variants (Hadamard W_O with a dense query; residual-MLP query), q4_0 and f16.
    for (i, w) in [(0, GgufWeights::Q4_0), (3, GgufWeights::F16)] {
        let (config, weights) = &small[i];
        let m = Model::from_bytes(Path::new("<variant>"), config, weights).unwrap();
        ggufs.push(gguf_bytes(&m, "fuzz", w).unwrap());
    }
    // A GQA model with a BPE vocabulary by llama.cpp's Python writer (27 KiB).
    ggufs.push(std::fs::read(root().join("tests/data/gguf/tiny-gqa-q4_0.gguf")).unwrap());
    ggufs.push(bpe_vocab_gguf());
    let llama_vocab =
        std::fs::read(root().join("tests/data/llama.cpp/ggml-vocab-llama-spm.gguf")).unwrap();
    Seeds {
        small,
        shipped,
        reports,
        texts,
        requests,
        tiny,
        ggufs,
        llama_vocab,
    }
}

/// A GGUF of a tiny byte-level BPE vocabulary (llama3 pre-tokenizer, merges, a control and
/// a user-defined token, a chat template).
fn bpe_vocab_gguf() -> Vec<u8> {
    fn s(out: &mut Vec<u8>, text: &str) {
        out.extend((text.len() as u64).to_le_bytes());
        out.extend(text.as_bytes());
    }
    fn strs(items: &[&str]) -> (u32, Vec<u8>) {
        let mut v = 8u32.to_le_bytes().to_vec();
        v.extend((items.len() as u64).to_le_bytes());
        items.iter().for_each(|x| s(&mut v, x));
        (9, v)
    }
    let tokens = [
        "R", "O", "M", "E", ".", "Ġ", "Ċ", "a", "b", "RO", "ME", "ROME", "<|eot|>", "<u>", "Ã", "±",
    ];
    let mut types = 5u32.to_le_bytes().to_vec();
    types.extend((tokens.len() as u64).to_le_bytes());
    for (i, _) in tokens.iter().enumerate() {
        let ty: i32 = match i {
            12 => 3,
            13 => 4,
            _ => 1,
        };
        types.extend(ty.to_le_bytes());
    }
    let text = |v: &str| {
        let mut out = Vec::new();
        s(&mut out, v);
        (8u32, out)
    };
    let entries: Vec<(&str, (u32, Vec<u8>))> = vec![
        ("tokenizer.ggml.model", text("gpt2")),
        ("tokenizer.ggml.pre", text("llama-bpe")),
        ("tokenizer.ggml.tokens", strs(&tokens)),
        ("tokenizer.ggml.token_type", (9, types)),
        ("tokenizer.ggml.merges", strs(&["R O", "M E", "RO ME"])),
        (
            "tokenizer.ggml.eos_token_id",
            (4, 12u32.to_le_bytes().to_vec()),
        ),
        ("tokenizer.chat_template", text("{{ messages }}")),
    ];
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend((entries.len() as u64).to_le_bytes());
    for (key, (code, value)) in entries {
        s(&mut out, key);
        out.extend(code.to_le_bytes());
        out.extend(value);
    }
    out
}

// ---- Targets --------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Target {
    Model,
    Report,
    Text,
    Request,
    Gguf,
}

impl Target {
    const ALL: [Target; 5] = [
        Target::Model,
        Target::Report,
        Target::Text,
        Target::Request,
        Target::Gguf,
    ];

    fn name(self) -> &'static str {
        match self {
            Target::Model => "model",
            Target::Report => "report",
            Target::Text => "text",
            Target::Request => "request",
            Target::Gguf => "gguf",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Target::ALL.into_iter().find(|t| name.starts_with(t.name()))
    }

    /// The targets `WALSH_FUZZ_TARGETS` names (a comma-separated list), or all of them.
    fn enabled() -> Vec<Target> {
        match std::env::var("WALSH_FUZZ_TARGETS") {
            Err(_) => Target::ALL.to_vec(),
            Ok(list) => list
                .split(',')
                .map(|n| {
                    Target::ALL
                        .into_iter()
                        .find(|t| t.name() == n.trim())
                        .unwrap_or_else(|| panic!("WALSH_FUZZ_TARGETS: no target {n:?}"))
                })
                .collect(),
        }
    }
}

/// One input: for models, `[config length: u32 LE][config][weights]`; otherwise the text.
fn model_input(config: &[u8], weights: &[u8]) -> Vec<u8> {
    let mut out = (config.len() as u32).to_le_bytes().to_vec();
    out.extend(config);
    out.extend(weights);
    out
}

fn split_model_input(input: &[u8]) -> (&[u8], &[u8]) {
    let n = input
        .get(..4)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
    let rest = input.get(4..).unwrap_or(&[]);
    rest.split_at(n.min(rest.len()))
}

/// Runs one input; the result is a short description of the outcome, used to tell new
/// behaviour from old.
fn execute(target: Target, input: &[u8], tiny: &Model) -> String {
    match target {
        Target::Model => {
            let (config, weights) = split_model_input(input);
            match Model::from_bytes(Path::new("fuzz"), config, weights) {
                Ok(model) => {
                    // A model that loads must run: one token on the CPU.
                    if weights.len() < (1 << 20) {
                        let positions = model.config.max_position_embeddings.min(2);
                        let mut dec = CpuDecoder::new(&model, positions, KvFormat::F16)
                            .expect("a loaded model decodes");
                        let logits = dec.forward(1, 0).expect("one token");
                        assert_eq!(logits.len(), model.config.vocab_size);
                    }
                    "ok".into()
                }
                Err(e) => outcome(&e.to_string()),
            }
        }
        Target::Report => {
            let text = String::from_utf8_lossy(input);
            match Report::from_json("fuzz.json", &text) {
                Ok(r) => {
                    let _ = r.to_markdown();
                    "ok".into()
                }
                Err(e) => outcome(&e.to_string()),
            }
        }
        Target::Text => run_text(input, tiny),
        Target::Request => run_request(input),
        Target::Gguf => run_gguf(input),
    }
}

/// A completions body as `walsh serve` reads it (a model of 128 positions), and where it
/// parses, each choice's output fed the input's first bytes as tokens.
fn run_request(input: &[u8]) -> String {
    let body: serde_json::Value = match serde_json::from_slice(input) {
        Ok(v) => v,
        Err(_) => return "not json".into(),
    };
    // A chat's messages through a ChatML template (what Qwen2 and SmolLM2 ship).
    if let Some(m) = body.get("messages") {
        let chatml = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        if let Ok(messages) = chat::messages(m) {
            let text = chat::apply(chatml, &messages, "", "").expect("ChatML renders any messages");
            assert!(text.ends_with("<|im_start|>assistant\n"));
        }
    }
    let bytes = Tokenizer::byte_level();
    let endpoint = if body.get("messages").is_some() {
        Endpoint::Chat
    } else {
        Endpoint::Completions
    };
    let c = match CompletionRequest::parse(&body, endpoint, 128, &bytes) {
        Ok(c) => c,
        Err(e) => {
            // The field a message names comes from the input (and may hold backticks):
            // what is outside the outermost pair tells the kind of error.
            let m = e.to_string();
            let (head, tail) = match (m.find('`'), m.rfind('`')) {
                (Some(a), Some(b)) => (&m[..a], &m[b + 1..]),
                _ => (m.as_str(), ""),
            };
            return outcome(&format!("{head}{tail}"));
        }
    };
    assert!(!c.prompts.is_empty() && c.prompts.len() <= 16);
    for p in &c.prompts {
        assert!(!p.is_empty() && p.len() + c.max_tokens <= 128, "{c:?}");
    }
    for index in 0..c.prompts.len() {
        let mut out = Output::new(&c, index, &bytes);
        let mut streamed = out.prefix.clone();
        for &b in input.iter().take(64) {
            streamed += &out.push(Update::Token(b as u32)).unwrap_or_default();
            if out.finish.is_some() {
                break;
            }
        }
        if out.finish.is_none() {
            streamed += &out
                .push(Update::Finished(Finish::Length))
                .unwrap_or_default();
        }
        assert_eq!(streamed, out.prefix.clone() + &out.text, "{c:?}");
        assert!(
            c.stop.iter().all(|s| !out.text.contains(s.as_str())),
            "{c:?}"
        );
    }
    format!("ok {} {}", c.stream, c.echo)
}

/// A GGUF file through the reader and, when it parses, the model loader (a model that
/// loads decodes a token on the CPU) and its tokenizer.
fn run_gguf(input: &[u8]) -> String {
    let gguf = match Gguf::parse(input) {
        Ok(g) => g,
        Err(e) => return outcome(&e.to_string()),
    };
    for t in gguf.tensors() {
        assert!(t.data.len() as u64 <= input.len() as u64, "{}", t.name);
    }
    let path = Path::new("fuzz.gguf");
    let model = match gguf_load::model_from_gguf(path, &gguf) {
        Ok(model) => {
            if input.len() < (1 << 20) {
                let positions = model.config.max_position_embeddings.min(2);
                let mut dec = CpuDecoder::new(&model, positions, KvFormat::F16)
                    .expect("a loaded GGUF model decodes");
                let logits = dec.forward(1, 0).expect("one token");
                assert_eq!(logits.len(), model.config.vocab_size);
            }
            // The tokenizer as the model loader checks it (ids within the vocabulary).
            match gguf_load::tokenizer_from_gguf(path, &gguf, &model.config) {
                Ok(_) => "model".to_string(),
                Err(e) => format!("model|{}", outcome(&e.to_string())),
            }
        }
        Err(e) => format!("no model|{}", outcome(&e.to_string())),
    };
    let tok = match Tokenizer::from_gguf(&gguf) {
        Ok(t) => t,
        Err(e) => return format!("{model}|parsed|{}", outcome(&e.to_string())),
    };
    let text = "ROMEO.\n<|eot|> añ😀 <u>\u{2581}<s>  x";
    for parse_special in [false, true] {
        let ids = tok.encode_with(text, true, parse_special);
        assert!(
            ids.iter().all(|&id| (id as usize) < tok.vocab_size()),
            "{ids:?}"
        );
        let bytes = tok.decode(&ids, parse_special).expect("ids it made decode");
        let mut d = tok.detokenizer(parse_special);
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&d.push(id).expect("ids it made decode"));
        }
        streamed.push_str(&d.finish());
        assert_eq!(
            streamed,
            String::from_utf8_lossy(&bytes),
            "stream and decode differ"
        );
    }
    format!("{model}|tokenizer")
}

/// Prompts, sampling settings and a text to score from one input, through the CPU
/// decoder; and the input as an adapter selector and a token stream.
fn run_text(input: &[u8], tiny: &Model) -> String {
    let mut stream = Utf8Stream::default();
    let mut round_trip = String::new();
    for &b in input {
        round_trip.push_str(&stream.push(b as u32));
    }
    round_trip.push_str(&stream.finish());
    let lossy = String::from_utf8_lossy(input);
    assert_eq!(
        round_trip, lossy,
        "Utf8Stream must agree with from_utf8_lossy"
    );
    let selector = match lossy.parse::<AdapterSelector>() {
        Ok(_) => "selector".into(),
        Err(e) => outcome(&e.to_string()),
    };

    // The first 12 bytes set the sampling, the decode chunk and the cache format; the
    // rest, split at newlines, are prompts.
    let byte = |i: usize| input.get(i).copied().unwrap_or(0);
    let float = |i: usize| f32::from_le_bytes([byte(i), byte(i + 1), byte(i + 2), byte(i + 3)]);
    let sampling = SamplingParams {
        temperature: float(0),
        top_k: byte(4) as usize,
        top_p: float(5),
        seed: byte(9) as u64,
    };
    let kv = if byte(11) & 1 == 0 {
        KvFormat::F16
    } else {
        KvFormat::F32
    };
    let body = input.get(12..).unwrap_or(&[]);
    let text = String::from_utf8_lossy(body);
    let prompts: Vec<Vec<u32>> = text.split('\n').take(4).map(encode_text).collect();
    let context = tiny.config.max_position_embeddings;
    let generated = match CpuBatch::new(tiny, prompts.len(), context, kv) {
        Ok(mut dec) => {
            let options = GenerateOptions {
                max_tokens: 1 + byte(4) as usize % 20,
                sampling,
                max_chunk: byte(10) as usize % 9, // 0 is refused
            };
            match generate(&mut dec, &prompts, &options, |_| ControlFlow::Continue(())) {
                Ok(g) => format!("generated {}", g.tokens.len()),
                Err(e) => outcome(&e.to_string()),
            }
        }
        Err(e) => outcome(&e.to_string()),
    };
    let tokens: Vec<u32> = body.iter().take(48).map(|&b| b as u32).collect();
    let mut dec = CpuBatch::new(tiny, 1, context, kv).expect("one sequence");
    let scored = match evaluate(&mut dec, &tokens, |_, _| {}) {
        Ok(r) => {
            assert!(r.nats_per_byte.is_finite(), "{r:?}");
            "scored".into()
        }
        Err(e) => outcome(&e.to_string()),
    };
    format!("{selector}|{generated}|{scored}")
}

/// An error message with its numbers and quoted names blanked: errors of one kind at
/// different places compare equal.
fn outcome(message: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in message.chars() {
        match c {
            '`' => quoted = !quoted,
            _ if quoted => {}
            '0'..='9' => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            _ => out.push(c),
        }
    }
    out.chars().take(120).collect()
}

// ---- The loop ---------------------------------------------------------------------------

/// Counts of a fuzz run.
#[derive(Default)]
struct Tally {
    executions: u64,
    failures: Vec<PathBuf>,
    outcomes: HashSet<String>,
}

fn failures_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures")
}

thread_local! {
    /// The message of the last panic inside an execution.
    static PANIC: RefCell<String> = const { RefCell::new(String::new()) };
    /// Whether this thread runs an execution (its panics are findings, caught and saved).
    static IN_EXECUTION: Cell<bool> = const { Cell::new(false) };
}

/// Runs `input` under the guard; Err(description) when it panicked or allocated beyond
/// its allowance.
fn guarded(target: Target, input: &[u8], tiny: &Model) -> Result<String, String> {
    OVER.with(|o| o.set(0));
    INPUT.with(|i| i.set((input.as_ptr() as usize, input.len())));
    let allowed = match target {
        Target::Gguf => gguf_allowance(input.len()),
        _ => allowance(input.len()),
    };
    BOUND.with(|b| b.set(allowed));
    IN_EXECUTION.with(|e| e.set(true));
    let result = catch_unwind(AssertUnwindSafe(|| execute(target, input, tiny)));
    IN_EXECUTION.with(|e| e.set(false));
    BOUND.with(|b| b.set(usize::MAX));
    let over = OVER.with(Cell::get);
    match result {
        Err(_) => Err(format!(
            "panicked: {}",
            PANIC.with(|p| std::mem::take(&mut *p.borrow_mut()))
        )),
        Ok(_) if over > 0 => Err(format!(
            "allocated {over} bytes at once for an input of {} bytes (allowance {allowed})",
            input.len(),
        )),
        Ok(outcome) => Ok(outcome),
    }
}

struct Fuzzer {
    rng: Rng,
    seeds: Seeds,
    /// Inputs that produced a new outcome, per target (bounded).
    pool: Vec<(Target, Vec<u8>)>,
    tally: Tally,
    targets: Vec<Target>,
}

const POOL_MAX: usize = 512;

impl Fuzzer {
    fn new(seed: u64) -> Self {
        Self {
            rng: Rng(seed),
            seeds: seeds(),
            pool: Vec::new(),
            tally: Tally::default(),
            targets: Target::enabled(),
        }
    }

    fn next_input(&mut self) -> (Target, Vec<u8>) {
        let rng = &mut self.rng;
        // Mostly the loader, the main attack surface.
        let target = loop {
            let t = match rng.below(12) {
                0 => Target::Report,
                1 => Target::Text,
                2 => Target::Request,
                3 | 4 => Target::Gguf,
                _ => Target::Model,
            };
            if self.targets.contains(&t) {
                break t;
            }
        };
        let from_pool: Vec<&Vec<u8>> = self
            .pool
            .iter()
            .filter(|(t, _)| *t == target)
            .map(|(_, i)| i)
            .collect();
        if !from_pool.is_empty() && rng.chance(3) {
            let base = (*rng.pick(&from_pool)).clone();
            return (target, mutate_any(rng, target, &base));
        }
        let input = match target {
            Target::Model => {
                let (config, weights) = if rng.chance(16) {
                    rng.pick(&self.seeds.shipped).clone()
                } else {
                    rng.pick(&self.seeds.small).clone()
                };
                let (config, weights) = match rng.below(8) {
                    0 => (mutate_json_text(rng, &config), weights),
                    1 => {
                        // A config of one model with the weights of another.
                        let other = rng.pick(&self.seeds.small).0.clone();
                        (other, weights)
                    }
                    2 => (
                        mutate_json_text(rng, &config),
                        mutate_safetensors(rng, &weights),
                    ),
                    _ => (config, mutate_safetensors(rng, &weights)),
                };
                model_input(&config, &weights)
            }
            Target::Report => {
                let base: &Vec<u8> = rng.pick(&self.seeds.reports);
                mutate_json_text(rng, base)
            }
            Target::Request => {
                let base: &Vec<u8> = rng.pick(&self.seeds.requests);
                mutate_any(rng, target, base)
            }
            Target::Text => {
                let mut text = rng.pick(&self.seeds.texts).clone();
                let mut head: Vec<u8> = (0..12).map(|_| rng.next() as u8).collect();
                if rng.chance(2) {
                    // Sensible sampling most of the time, so generation runs.
                    head[..4].copy_from_slice(&rng.pick(&[0.0f32, 0.8, 1.0, -1.0]).to_le_bytes());
                    head[5..9].copy_from_slice(&rng.pick(&[0.95f32, 1.0, 0.5]).to_le_bytes());
                }
                for _ in 0..rng.below(4) {
                    let len = text.len();
                    mutate_bytes(rng, &mut text, 0..len);
                }
                head.extend(text);
                head
            }
            Target::Gguf => {
                let base = if rng.chance(16) {
                    &self.seeds.llama_vocab
                } else {
                    rng.pick(&self.seeds.ggufs)
                };
                mutate_gguf(rng, base)
            }
        };
        (target, input)
    }

    fn run_one(&mut self) {
        let (target, input) = self.next_input();
        self.tally.executions += 1;
        match guarded(target, &input, &self.seeds.tiny) {
            Ok(outcome) => {
                let key = format!("{}:{outcome}", target.name());
                if self.tally.outcomes.insert(key) {
                    if self.pool.len() >= POOL_MAX {
                        let i = self.rng.below(self.pool.len());
                        self.pool.swap_remove(i);
                    }
                    self.pool.push((target, input));
                }
            }
            Err(what) => {
                let dir = failures_dir();
                let _ = std::fs::create_dir_all(&dir);
                let path = dir.join(format!("{}-{:016x}.bin", target.name(), fnv1a(&input)));
                let _ = std::fs::write(&path, &input);
                eprintln!("fuzz: FAILURE ({what}); input saved to {}", path.display());
                self.tally.failures.push(path);
            }
        }
    }
}

fn mutate_any(rng: &mut Rng, target: Target, base: &[u8]) -> Vec<u8> {
    match target {
        Target::Model => {
            let (config, weights) = split_model_input(base);
            if rng.chance(4) {
                model_input(&mutate_json_text(rng, config), weights)
            } else {
                model_input(config, &mutate_safetensors(rng, weights))
            }
        }
        Target::Report => mutate_json_text(rng, base),
        Target::Request => {
            let mut input = mutate_json_text(rng, base);
            if rng.chance(4) {
                let len = input.len();
                mutate_bytes(rng, &mut input, 0..len);
            }
            input
        }
        Target::Text => {
            let mut input = base.to_vec();
            let len = input.len();
            mutate_bytes(rng, &mut input, 0..len);
            input
        }
        Target::Gguf => mutate_gguf(rng, base),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// Runs until `stop` says so, with the panic hook muted (panics are caught and counted).
fn fuzz(seed: u64, mut stop: impl FnMut(&Tally) -> bool) -> Tally {
    let default_hook: std::sync::Arc<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync> =
        std::panic::take_hook().into();
    let outside = default_hook.clone();
    std::panic::set_hook(Box::new(move |info| {
        if IN_EXECUTION.with(Cell::get) {
            PANIC.with(|p| *p.borrow_mut() = info.to_string());
        } else {
            outside(info); // the harness itself: report as usual
        }
    }));
    let mut fuzzer = Fuzzer::new(seed);
    while !stop(&fuzzer.tally) {
        fuzzer.run_one();
    }
    drop(std::panic::take_hook());
    std::panic::set_hook(Box::new(move |info| default_hook(info)));
    fuzzer.tally
}

/// Executions of the bounded run: a few seconds.
const BOUNDED_EXECUTIONS: u64 = 40_000;

/// The bounded run of every `cargo test`: a fixed number of executions from a fixed seed,
/// so it is the same run everywhere. With `WALSH_FUZZ_MINUTES` set, the long run instead.
#[test]
fn loader_and_text_inputs_survive_mutation() {
    if std::env::var_os("WALSH_FUZZ_REPLAY").is_some() {
        return; // the replay test below runs alone
    }
    let minutes: Option<f64> = std::env::var("WALSH_FUZZ_MINUTES").ok().map(|m| {
        m.parse()
            .expect("WALSH_FUZZ_MINUTES is a number of minutes")
    });
    let start = Instant::now();
    let tally = match minutes {
        None => {
            let seed = env_seed().unwrap_or(1);
            fuzz(seed, |t| t.executions >= BOUNDED_EXECUTIONS)
        }
        Some(minutes) => {
            let seed = env_seed().unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            });
            println!(
                "fuzz: seed {seed} (WALSH_FUZZ_SEED={seed} repeats this run), {minutes} minutes"
            );
            let deadline = Duration::from_secs_f64(minutes * 60.0);
            let mut last = Instant::now();
            fuzz(seed, |t| {
                if last.elapsed() >= Duration::from_secs(30) {
                    last = Instant::now();
                    let s = start.elapsed().as_secs_f64();
                    println!(
                        "fuzz: {:.1} min, {} executions ({:.0}/s), {} outcomes, {} failures",
                        s / 60.0,
                        t.executions,
                        t.executions as f64 / s,
                        t.outcomes.len(),
                        t.failures.len()
                    );
                    let _ = std::io::stdout().flush();
                }
                start.elapsed() >= deadline
            })
        }
    };
    if std::env::var_os("WALSH_FUZZ_OUTCOMES").is_some() {
        let mut all: Vec<&String> = tally.outcomes.iter().collect();
        all.sort();
        for o in all {
            println!("  {o}");
        }
    }
    let minutes_run = start.elapsed().as_secs_f64() / 60.0;
    println!(
        "fuzz: {} executions in {minutes_run:.2} minutes, {} failures ({} distinct outcomes)",
        tally.executions,
        tally.failures.len(),
        tally.outcomes.len()
    );
    assert!(
        tally.failures.is_empty(),
        "failing inputs (replay with WALSH_FUZZ_REPLAY=FILE): {:?}",
        tally.failures
    );
    // The mutations reach past the first checks: many kinds of error, and loads.
    let targets = Target::enabled();
    if targets.len() == Target::ALL.len() {
        assert!(tally.outcomes.len() >= 40, "{:?}", tally.outcomes);
    }
    for kind in [
        "model:ok",
        "report:ok",
        "request:ok false false",
        "gguf:model|tokenizer",
    ] {
        if !targets.iter().any(|t| kind.starts_with(t.name())) {
            continue;
        }
        assert!(
            tally.outcomes.contains(kind),
            "never {kind}: {:?}",
            tally.outcomes
        );
    }
}

/// The guard is live: a single allocation one byte over the allowance is seen, one at the
/// allowance is not.
#[test]
fn the_allocation_guard_sees_allocations_over_the_allowance() {
    let allowed = allowance(1000);
    OVER.with(|o| o.set(0));
    BOUND.with(|b| b.set(allowed));
    let at: Vec<u8> = Vec::with_capacity(allowed);
    let seen_at = OVER.with(Cell::get);
    let over: Vec<u8> = Vec::with_capacity(allowed + 1);
    BOUND.with(|b| b.set(usize::MAX));
    assert_eq!(seen_at, 0);
    assert_eq!(OVER.with(Cell::get), allowed + 1);
    drop((at, over));
}

/// Found by this fuzzer: the streamed text of a generation dropped a valid character
/// that followed an invalid byte (`E2 C5 9F` gave three U+FFFD instead of `\u{FFFD}ş`),
/// so `walsh generate` printed other text than its `--json` tokens decode to.
#[test]
fn utf8_stream_resumes_after_an_invalid_sequence() {
    for bytes in [
        &[0xE2, 0xC5, 0x9F][..],
        &[0xF0, 0x9F, 0x41, 0xE2, 0x82, 0xAC],
        &[0xC5, 0xC5, 0x9F, 0x80, 0x80],
        &[0xED, 0xA0, 0x80, 0x41], // a surrogate: three bytes, each replaced
        &[0xE2, 0x82],             // held back, then flushed by finish
    ] {
        let mut stream = Utf8Stream::default();
        let mut text = String::new();
        for &b in bytes {
            text.push_str(&stream.push(b as u32));
        }
        text.push_str(&stream.finish());
        assert_eq!(text, String::from_utf8_lossy(bytes), "{bytes:x?}");
    }
    let mut stream = Utf8Stream::default();
    assert_eq!(stream.push(0xE2), "");
    assert_eq!(stream.push(0xC5), "\u{FFFD}");
    assert_eq!(stream.push(0x9F), "ş");
}

fn env_seed() -> Option<u64> {
    std::env::var("WALSH_FUZZ_SEED")
        .ok()
        .map(|s| s.parse().expect("WALSH_FUZZ_SEED is an integer"))
}

/// `WALSH_FUZZ_REPLAY=target/tmp/fuzz-failures/model-....bin cargo test --test fuzz_loader
/// replay -- --nocapture` runs one saved input, unguarded, so a panic shows its backtrace.
#[test]
fn replay() {
    let Some(path) = std::env::var_os("WALSH_FUZZ_REPLAY") else {
        return;
    };
    let path = PathBuf::from(path);
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let target = Target::from_name(&name).unwrap_or(Target::Model);
    let input = std::fs::read(&path).unwrap();
    let seeds = seeds();
    println!("{name}: {}", execute(target, &input, &seeds.tiny));
}

/// Every truncation of a small exported GGUF that cuts into its tensors' bytes fails, and
/// flipping any byte of its header (each bit pattern inverted) never panics, in the reader
/// or in the tokenizer of what still parses.
#[test]
fn gguf_truncations_fail_and_header_flips_never_panic() {
    let seeds = seeds();
    for file in &seeds.ggufs {
        let g = Gguf::parse(file).unwrap();
        let end = g
            .tensors()
            .iter()
            .map(|t| g.data_start + t.offset as usize + t.data.len())
            .max()
            .unwrap_or(0);
        let header = gguf_fields(file)
            .last()
            .map_or(file.len(), |&(at, w)| at + w);
        // Every cut up to the last header field, then a sample of cuts into the data.
        let cuts = (0..header.min(end.max(header))).chain((header..end).step_by(97));
        for n in cuts {
            assert!(
                Gguf::parse(&file[..n]).is_err(),
                "truncated at {n} of {end}"
            );
        }
        for i in 0..header.min(file.len()) {
            let mut b = file.clone();
            b[i] ^= 0xff;
            let _ = run_gguf(&b);
        }
    }
}
