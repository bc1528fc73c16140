//! Sizes checked before anything is allocated for them. A size that comes from a command
//! line or a config file can ask for terabytes; each function here computes what a path
//! would allocate, in 128-bit arithmetic so nothing wraps, and returns an error naming the
//! limit instead of letting the allocation abort the process.
//!
//! Files are read through [`read_at_most`], so a file (or `/dev/zero`) larger than what
//! its reader can use is refused without being held in memory.

use std::fmt;
use std::io::Read;
use std::path::Path;

use thiserror::Error;

use crate::model::Config;
use crate::model::weights::expected_tensors;
use crate::ops::attention::KvFormat;

/// The most memory one buffer set of a run may take (a WHT batch, a decoder's KV cache,
/// the logits of an evaluation window): 8 GiB.
pub const MAX_RUN_BYTES: u64 = 8 << 30;
/// The most bytes one buffer of `walsh wht` may hold: 1 GiB (2^28 f32 values).
pub const MAX_WHT_BUFFER_BYTES: u64 = 1 << 30;
/// The most parameters `walsh init-model` writes: 2^29 (the paper grid's largest model,
/// d_model 4096 with two layers, has 436M), 2 GiB of f32 values, which it holds a few
/// times over while writing and checking the file.
pub const MAX_RANDOM_PARAMETERS: u64 = 1 << 29;
/// The largest text `walsh eval` scores: 256 MiB (each byte becomes a 4-byte token).
pub const MAX_TEXT_BYTES: u64 = 256 << 20;
/// The largest `config.json`: 1 MiB (a real one is under 1 KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The largest safetensors header the format allows (the safetensors crate's own bound).
pub const MAX_SAFETENSORS_HEADER_BYTES: u64 = 100_000_000;

/// A size beyond one of the limits above: what needed it, how much, and the limit.
#[derive(Debug, Error, PartialEq, Eq)]
pub struct LimitError {
    /// What asked, e.g. `100000000 rows of 4096 values`.
    pub what: String,
    /// The verb between, e.g. `take`.
    pub needs: &'static str,
    pub needed: u128,
    pub limit: u64,
    /// What the limit bounds, e.g. `per WHT buffer`.
    pub limit_name: &'static str,
    pub unit: Unit,
    /// Advice, starting with `: ` when present.
    pub hint: String,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}, more than walsh's limit of {} {}{}",
            self.what,
            self.needs,
            Amount(self.needed, self.unit),
            Amount(self.limit as u128, self.unit),
            self.limit_name,
            self.hint
        )
    }
}

/// How [`LimitError`] prints its numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Parameters,
}

struct Amount(u128, Unit);

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Unit::Bytes => f.write_str(&human_bytes(self.0)),
            Unit::Parameters => write!(f, "{} parameters", self.0),
        }
    }
}

/// `1536` -> `1.5 KiB`; exact below 1 KiB.
pub fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The product, saturating at u128::MAX (far beyond every limit).
fn product(factors: &[usize]) -> u128 {
    factors
        .iter()
        .fold(1u128, |p, &f| p.saturating_mul(f as u128))
}

/// Bytes of one buffer of a `walsh wht` batch (`rows` rows of `n` f32), at most
/// [`MAX_WHT_BUFFER_BYTES`].
pub fn wht_batch(rows: usize, n: usize) -> Result<u64, LimitError> {
    let needed = product(&[rows, n, 4]);
    if needed > MAX_WHT_BUFFER_BYTES as u128 {
        return Err(LimitError {
            what: format!("{rows} rows of {n} values"),
            needs: "take",
            needed,
            limit: MAX_WHT_BUFFER_BYTES,
            limit_name: "per WHT buffer",
            unit: Unit::Bytes,
            hint: format!(
                ": use at most {} rows of this width",
                MAX_WHT_BUFFER_BYTES as u128 / (n.max(1) as u128 * 4)
            ),
        });
    }
    Ok(needed as u64)
}

/// Number of parameters a model of `config` has (every tensor of
/// [`expected_tensors`]), without overflow.
pub fn parameters(config: &Config) -> u128 {
    expected_tensors(config)
        .iter()
        .fold(0u128, |sum, (_, shape)| sum.saturating_add(product(shape)))
}

/// The parameters of a random model of `config`, at most [`MAX_RANDOM_PARAMETERS`].
pub fn random_model(config: &Config) -> Result<u64, LimitError> {
    let needed = parameters(config);
    if needed > MAX_RANDOM_PARAMETERS as u128 {
        return Err(LimitError {
            what: format!(
                "a random model of d_model {}, {} layers, FFN {} and context {}",
                config.hidden_size,
                config.num_hidden_layers,
                config.intermediate_size,
                config.max_position_embeddings
            ),
            needs: "has",
            needed,
            limit: MAX_RANDOM_PARAMETERS,
            limit_name: "for a random model",
            unit: Unit::Parameters,
            hint: ": choose fewer layers or a smaller width".into(),
        });
    }
    Ok(needed as u64)
}

/// Where a decoder runs, for [`decoder_memory`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The CPU reference: an f32 copy of the weights per sequence, plus an f32 cache (its
    /// values rounded to the cache format).
    Cpu,
    /// The GPU: the cache in its format (the adapter's own limits are checked when it is
    /// allocated).
    Gpu(KvFormat),
}

/// Bytes a decoder of `seqs` sequences of `context` positions sets aside: the KV cache
/// (`2 x layers x seqs x context x d_model` values, 4 bytes each on the CPU; on the GPU
/// as the format stores them, [`KvFormat::position_bytes`] per position) and, on the CPU,
/// each sequence's f32 weights; at most [`MAX_RUN_BYTES`].
pub fn decoder_memory(
    config: &Config,
    seqs: usize,
    context: usize,
    placement: Placement,
) -> Result<u64, LimitError> {
    let position_bytes = match placement {
        Placement::Cpu => 4 * config.hidden_size as u64,
        Placement::Gpu(kv) => {
            let heads = config.num_attention_heads.max(1);
            kv.position_bytes(heads, config.hidden_size / heads)
        }
    };
    let cache = product(&[2, config.num_hidden_layers, seqs, context])
        .saturating_mul(position_bytes as u128);
    let weights = match placement {
        Placement::Cpu => parameters(config).saturating_mul(4 * seqs as u128),
        Placement::Gpu(_) => 0,
    };
    let needed = cache.saturating_add(weights);
    if needed > MAX_RUN_BYTES as u128 {
        let per_seq = needed / seqs.max(1) as u128;
        return Err(LimitError {
            what: format!(
                "{seqs} sequence(s) of {context} positions ({} KV cache{})",
                human_bytes(cache),
                if placement == Placement::Cpu {
                    format!(", {} of f32 weights", human_bytes(weights))
                } else {
                    String::new()
                }
            ),
            needs: "take",
            needed,
            limit: MAX_RUN_BYTES,
            limit_name: "per run",
            unit: Unit::Bytes,
            hint: format!(
                ": {} fit (each takes {})",
                MAX_RUN_BYTES as u128 / per_seq.max(1),
                human_bytes(per_seq)
            ),
        });
    }
    Ok(needed as u64)
}

/// Bytes of the logits of one evaluation window (`context x vocab` f32), at most
/// [`MAX_RUN_BYTES`].
pub fn eval_window(config: &Config) -> Result<u64, LimitError> {
    let needed = product(&[config.max_position_embeddings, config.vocab_size, 4]);
    if needed > MAX_RUN_BYTES as u128 {
        return Err(LimitError {
            what: format!(
                "the logits of one window ({} positions x {} tokens)",
                config.max_position_embeddings, config.vocab_size
            ),
            needs: "take",
            needed,
            limit: MAX_RUN_BYTES,
            limit_name: "per run",
            unit: Unit::Bytes,
            hint: String::new(),
        });
    }
    Ok(needed as u64)
}

/// The most bytes a `model.safetensors` for `config` can have: the 8-byte header length,
/// the largest header, and every parameter as f32. A longer file cannot be valid, so it
/// is refused before it is read.
pub fn max_weights_file_bytes(config: &Config) -> u64 {
    let bound = parameters(config)
        .saturating_mul(4)
        .saturating_add(8 + MAX_SAFETENSORS_HEADER_BYTES as u128);
    bound.min(u64::MAX as u128) as u64
}

/// Reads `path` whole if it holds at most `limit` bytes; a longer file (or an endless one,
/// like a pipe or `/dev/zero`) fails with `FileTooLarge` after reading at most
/// `limit + 1` bytes.
pub fn read_at_most(path: &Path, limit: u64, what: &str) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let too_large = |size: &str| {
        std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "{size}, more than walsh's limit of {} for {what}",
                human_bytes(limit as u128)
            ),
        )
    };
    let len = file.metadata()?.len();
    if len > limit {
        return Err(too_large(&format!(
            "the file is {}",
            human_bytes(len as u128)
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large("it goes on"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AttnOutput;

    fn config(d: usize, layers: usize, context: usize, vocab: usize) -> Config {
        Config {
            hidden_size: d,
            num_hidden_layers: layers,
            num_attention_heads: 4,
            intermediate_size: 3 * d,
            vocab_size: vocab,
            max_position_embeddings: context,
            attn_output: AttnOutput::Hadamard,
            ..Default::default()
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(1000), "1000 bytes");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(8 << 30), "8.0 GiB");
        assert_eq!(human_bytes(1_638_400_000_000), "1.5 TiB");
        assert_eq!(human_bytes(u128::MAX), "288230376151711744.0 ZiB");
    }

    #[test]
    fn wht_batches_up_to_a_gibibyte() {
        assert_eq!(wht_batch(4096, 1024), Ok(16 << 20));
        assert_eq!(wht_batch(1 << 16, 4096), Ok(1 << 30));
        let e = wht_batch(100_000_000, 4096).unwrap_err();
        assert_eq!(e.needed, 1_638_400_000_000);
        assert_eq!(
            e.to_string(),
            "100000000 rows of 4096 values take 1.5 TiB, more than walsh's limit of 1.0 GiB \
             per WHT buffer: use at most 65536 rows of this width"
        );
        // Products that overflow 64 bits are still caught.
        assert!(wht_batch(usize::MAX, usize::MAX).is_err());
    }

    #[test]
    fn parameters_match_the_tensor_list() {
        // d 64, 1 layer, FFN 192, vocab 256, Hadamard, dense query: embedding and head
        // 2 x 256 x 64, norms 3 x 64, q k v 3 x 64 x 64, o_scale + o_bias 2 x 64,
        // MLP 3 x 64 x 192.
        let c = config(64, 1, 16, 256);
        assert_eq!(
            parameters(&c),
            2 * 256 * 64 + 3 * 64 + 3 * 64 * 64 + 2 * 64 + 3 * 64 * 192
        );
        assert_eq!(random_model(&c), Ok(parameters(&c) as u64));
        let big = config(32768, 1024, 16, 1 << 20);
        let e = random_model(&big).unwrap_err();
        assert!(e.needed > 1 << 40, "{e}");
        assert!(
            e.to_string()
                .contains("536870912 parameters for a random model"),
            "{e}"
        );
    }

    #[test]
    fn decoder_memory_counts_cache_and_cpu_weights() {
        let c = config(64, 2, 1024, 256);
        let cache = 2 * 2 * 3 * 1024 * 64 * 4;
        let f32_gpu = Placement::Gpu(KvFormat::F32);
        assert_eq!(decoder_memory(&c, 3, 1024, f32_gpu), Ok(cache));
        let f16_gpu = Placement::Gpu(KvFormat::F16);
        assert_eq!(decoder_memory(&c, 3, 1024, f16_gpu), Ok(cache / 2));
        // 4 heads of 16: q8 a scale word and 4 level words per head, q4 a scale and 2.
        let q8 = Placement::Gpu(KvFormat::Q8);
        assert_eq!(decoder_memory(&c, 3, 1024, q8), Ok(cache / 256 * 4 * 5 * 4));
        let q4r = Placement::Gpu(KvFormat::Q4Rot);
        assert_eq!(
            decoder_memory(&c, 3, 1024, q4r),
            Ok(cache / 256 * 4 * 3 * 4)
        );
        assert_eq!(
            decoder_memory(&c, 3, 1024, Placement::Cpu),
            Ok(cache + 3 * 4 * parameters(&c) as u64)
        );
        // 1M positions of d 64, 1 layer: 512 MiB of f32 cache per sequence; 17 of them are
        // too many (33 with an f16 cache).
        let long = config(64, 1, 1 << 20, 256);
        assert!(decoder_memory(&long, 16, 1 << 20, f32_gpu).is_ok());
        assert!(decoder_memory(&long, 32, 1 << 20, f16_gpu).is_ok());
        assert!(decoder_memory(&long, 33, 1 << 20, f16_gpu).is_err());
        let e = decoder_memory(&long, 17, 1 << 20, f32_gpu).unwrap_err();
        assert_eq!(e.needed, 17 << 29);
        assert!(
            e.to_string().starts_with(
                "17 sequence(s) of 1048576 positions (8.5 GiB KV cache) take 8.5 GiB, more \
                 than walsh's limit of 8.0 GiB per run: 16 fit"
            ),
            "{e}"
        );
    }

    #[test]
    fn eval_windows_and_weight_files() {
        assert_eq!(eval_window(&config(64, 1, 128, 256)), Ok(128 * 256 * 4));
        let e = eval_window(&config(64, 1, 1 << 20, 1 << 20)).unwrap_err();
        assert!(e.to_string().contains("4.0 TiB"), "{e}");
        let c = config(64, 1, 16, 256);
        assert_eq!(
            max_weights_file_bytes(&c),
            8 + 100_000_000 + 4 * parameters(&c) as u64
        );
    }

    #[test]
    fn reads_stop_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 100]).unwrap();
        assert_eq!(read_at_most(&path, 100, "a test").unwrap(), vec![7u8; 100]);
        let e = read_at_most(&path, 99, "a test").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::FileTooLarge);
        assert_eq!(
            e.to_string(),
            "the file is 100 bytes, more than walsh's limit of 99 bytes for a test"
        );
        // A file that reports no length but never ends.
        #[cfg(target_os = "linux")]
        {
            let e = read_at_most(Path::new("/dev/zero"), 1 << 16, "a test").unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::FileTooLarge);
            assert!(e.to_string().starts_with("it goes on"), "{e}");
        }
        assert_eq!(
            read_at_most(&dir.path().join("missing"), 1, "a test")
                .unwrap_err()
                .kind(),
            std::io::ErrorKind::NotFound
        );
    }
}
