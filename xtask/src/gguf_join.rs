//! Joins the committed pieces of the llama-bpe fixture back into the GGUF file llama.cpp
//! ran (`tests/gguf_load.rs` `llama_cpp_file` does the same with walsh's reader): the
//! browser test opens it through the page's "Open a model" control.
//!
//! The pieces: `tests/data/gguf/llama-bpe/{tag}.weights.gguf` (metadata and layer
//! tensors), `embd.gguf` (the token embedding) and llama.cpp's vocabulary file
//! `tests/data/llama.cpp/ggml-vocab-llama-bpe.gguf` (its `tokenizer.*` keys). The joined
//! file has the weights file's keys, then the vocabulary's `tokenizer.*` keys, and the
//! embedding before the layer tensors. Written here from the GGUF layout (little-endian,
//! version 3, 32-byte alignment), independent of walsh's reader: key/value entries are
//! copied as they are, tensors with their data re-offset. The Q8_0 file it writes is byte
//! for byte the one `llama_cpp_file("llama-bpe", "q8_0")` makes (compared when this was written).

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

/// GGUF's default alignment of tensor data (the pieces set no other).
const ALIGNMENT: usize = 32;

/// One parsed piece: its key/value entries as raw bytes (key first) and its tensors.
struct Piece {
    kv: Vec<(String, Vec<u8>)>,
    tensors: Vec<Tensor>,
}

struct Tensor {
    name: String,
    /// n_dims, dims and type, as stored.
    shape_and_type: Vec<u8>,
    /// The data, with whatever padding followed it in its file.
    data: Vec<u8>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).context("length overflow")?;
        ensure!(end <= self.bytes.len(), "truncated at byte {}", self.at);
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u64()? as usize;
        Ok(String::from_utf8(self.take(n)?.to_vec())?)
    }
    /// Skips one value of GGUF type `ty`.
    fn skip_value(&mut self, ty: u32) -> Result<()> {
        match ty {
            0 | 1 | 7 => self.take(1).map(drop),
            2 | 3 => self.take(2).map(drop),
            4..=6 => self.take(4).map(drop),
            10..=12 => self.take(8).map(drop),
            8 => self.string().map(drop),
            9 => {
                let elem = self.u32()?;
                let n = self.u64()?;
                for _ in 0..n {
                    self.skip_value(elem)?;
                }
                Ok(())
            }
            other => bail!("unknown GGUF value type {other}"),
        }
    }
}

fn parse(path: &Path) -> Result<Piece> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let parsed = (|| {
        let mut r = Reader {
            bytes: &bytes,
            at: 0,
        };
        ensure!(r.take(4)? == b"GGUF", "not a GGUF file");
        let version = r.u32()?;
        ensure!(version == 3, "GGUF version {version}, not 3");
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        let mut kv = Vec::new();
        for _ in 0..n_kv {
            let start = r.at;
            let key = r.string()?;
            let ty = r.u32()?;
            r.skip_value(ty)?;
            ensure!(key != "general.alignment", "general.alignment is set");
            kv.push((key, bytes[start..r.at].to_vec()));
        }
        let mut infos = Vec::new();
        for _ in 0..n_tensors {
            let name = r.string()?;
            let start = r.at;
            let dims = r.u32()?;
            r.take(8 * dims as usize + 4)?;
            let shape_and_type = bytes[start..r.at].to_vec();
            let offset = r.u64()? as usize;
            infos.push((name, shape_and_type, offset));
        }
        let data = r.at.next_multiple_of(ALIGNMENT);
        ensure!(
            infos.is_empty() || data <= bytes.len(),
            "truncated before the tensor data"
        );
        let mut ends: Vec<usize> = infos.iter().map(|t| t.2).collect();
        ends.push(bytes.len().saturating_sub(data));
        ends.sort_unstable();
        let tensors = infos
            .into_iter()
            .map(|(name, shape_and_type, offset)| {
                // A tensor runs to the next one's offset (or the file's end).
                let end = *ends.iter().find(|&&e| e > offset).context("empty tensor")?;
                Ok(Tensor {
                    name,
                    shape_and_type,
                    data: bytes[data + offset..data + end].to_vec(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Piece { kv, tensors })
    })();
    parsed.with_context(|| format!("reading {} as GGUF", path.display()))
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// The llama-bpe fixture in `tag` (`f16`, `q8_0` or `q4_0`) as one GGUF file.
pub fn llama_bpe_file(root: &Path, tag: &str) -> Result<Vec<u8>> {
    let dir = root.join("tests/data/gguf/llama-bpe");
    let weights = parse(&dir.join(format!("{tag}.weights.gguf")))?;
    let embd = parse(&dir.join("embd.gguf"))?;
    let vocab = parse(&root.join("tests/data/llama.cpp/ggml-vocab-llama-bpe.gguf"))?;
    let kv: Vec<&Vec<u8>> = weights
        .kv
        .iter()
        .chain(vocab.kv.iter().filter(|(k, _)| k.starts_with("tokenizer.")))
        .map(|(_, raw)| raw)
        .collect();
    let first = embd.tensors.first().context("embd.gguf has no tensor")?;
    let tensors: Vec<&Tensor> = std::iter::once(first)
        .chain(weights.tensors.iter())
        .collect();
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for raw in kv {
        out.extend(raw);
    }
    let mut offset = 0usize;
    for t in &tensors {
        put_string(&mut out, &t.name);
        out.extend(&t.shape_and_type);
        out.extend((offset as u64).to_le_bytes());
        offset = (offset + t.data.len()).next_multiple_of(ALIGNMENT);
    }
    out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
    for t in &tensors {
        out.extend(&t.data);
        out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
    }
    Ok(out)
}
