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

/// The most memory one buffer set of a run may take (a WHT batch, a decoder's KV cache,
/// the logits of an evaluation window): 8 GiB.
pub const MAX_RUN_BYTES: u64 = 8 << 30;
/// The most bytes one buffer of `walsh wht` may hold: 1 GiB (2^28 f32 values).
pub const MAX_WHT_BUFFER_BYTES: u64 = 1 << 30;
/// The fewest parameters `walsh init-model` may write whatever the memory: 2^29 (d_model
/// 4096 with two layers has 436M).
pub const MIN_RANDOM_PARAMETER_LIMIT: u64 = 1 << 29;
/// Bytes `walsh init-model` holds per parameter while it writes a model: the f32 values,
/// their encoded bytes and the serialized file (4 + 4 + 4 with f32 weights).
pub const RANDOM_MODEL_BYTES_PER_PARAMETER: u64 = 12;

/// The most parameters `walsh init-model` writes on a machine with `available` bytes of
/// memory free ([`available_memory`]): what fits at [`RANDOM_MODEL_BYTES_PER_PARAMETER`],
/// and never fewer than [`MIN_RANDOM_PARAMETER_LIMIT`] (the limit where the memory is
/// unknown). The models of a big GPU's benchmarks (d_model 8192 with two layers, 1.6e9
/// parameters) follow the machine that makes them, not a fixed bound.
pub fn random_parameter_limit(available: Option<u64>) -> u64 {
    available.map_or(MIN_RANDOM_PARAMETER_LIMIT, |bytes| {
        (bytes / RANDOM_MODEL_BYTES_PER_PARAMETER).max(MIN_RANDOM_PARAMETER_LIMIT)
    })
}

/// The memory the system could give this process now (`MemAvailable` of /proc/meminfo on
/// Linux); None where it is not known.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then(|| kib.saturating_mul(1024))
}
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
pub fn product(factors: &[usize]) -> u128 {
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

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(1000), "1000 bytes");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(8 << 30), "8.0 GiB");
        assert_eq!(human_bytes(1_638_400_000_000), "1.5 TiB");
        assert_eq!(human_bytes(u128::MAX), "288230376151711744.0 ZiB");
    }

    #[test]
    fn random_models_are_bounded_by_the_memory_available() {
        let meminfo =
            "MemTotal:       24000000 kB\nMemFree:  1000 kB\nMemAvailable:   20971520 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(20 << 30));
        assert_eq!(parse_mem_available("MemAvailable: 12 MB\n"), None);
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
        // 20 GiB at 12 bytes a parameter: d_model 8192 x 2 layers (1.6e9) fits.
        assert_eq!(random_parameter_limit(Some(20 << 30)), (20 << 30) / 12);
        assert!(random_parameter_limit(Some(20 << 30)) > 1_600_000_000);
        // Unknown or small memory: the floor.
        assert_eq!(random_parameter_limit(None), MIN_RANDOM_PARAMETER_LIMIT);
        assert_eq!(
            random_parameter_limit(Some(1 << 30)),
            MIN_RANDOM_PARAMETER_LIMIT
        );
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
