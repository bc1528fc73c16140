//! `walsh profile`: where one decode step (and one prefill) of a model spends its time,
//! dispatch by dispatch, against the copy shader on the same device.

use serde::{Deserialize, Serialize};

use super::Config;
use crate::gpu::profile::{RecordingTime, TimingMethod, time_recording};
use crate::gpu::{Gpu, GpuError, MemoryCategory, Recording};
use crate::ops::copy::encode_copy;

/// The copy shader's rate on one device: the roof the rows are compared with.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyRate {
    /// Bytes read plus bytes written by one copy.
    pub bytes: u64,
    pub seconds: f64,
}

impl CopyRate {
    pub fn gb_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-12) / 1e9
    }
}

/// Times the copy shader over `bytes` (clamped to 1 MiB .. the binding limit and 256 MiB):
/// about the size of the weights a decode step reads, so caches play the same part.
pub async fn copy_bandwidth(gpu: &Gpu, bytes: u64, repeats: usize) -> Result<CopyRate, GpuError> {
    let limit = gpu
        .limits()
        .max_storage_buffer_binding_size
        .min(gpu.limits().max_buffer_size)
        .min(256 << 20);
    let size = bytes.clamp(1 << 20, limit.max(1 << 20)) / 16 * 16;
    let src = gpu.storage(MemoryCategory::Scratch, "profile copy source", size)?;
    let dst = gpu.storage(MemoryCategory::Scratch, "profile copy destination", size)?;
    let mut rec = Recording::new();
    encode_copy(gpu, &mut rec, &src, &dst, size)?;
    let t = time_recording(gpu, &rec, repeats).await?;
    let seconds = t.dispatches.first().map_or(t.wall_seconds, |d| d.seconds);
    Ok(CopyRate {
        bytes: 2 * size,
        seconds,
    })
}

/// One dispatch of a profiled step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileRow {
    pub kernel: String,
    pub grid: [u32; 3],
    /// Storage bytes bound (an upper bound of the bytes moved).
    pub bytes: u64,
    pub us: f64,
    pub gb_per_s: f64,
    /// Of the copy shader's GB/s.
    pub pct_of_copy: f64,
    /// Of the sum of the step's dispatch times.
    pub share: f64,
}

/// The dispatches of one kernel family (`shader:entry`) in a step, added up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelShare {
    pub kernel: String,
    pub dispatches: usize,
    pub us: f64,
    pub share: f64,
}

/// A profiled step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepProfile {
    pub rows: Vec<ProfileRow>,
    pub kernels: Vec<KernelShare>,
    /// Dispatches of the step (forward and sampling).
    pub dispatches: usize,
    /// The rows' times added up.
    pub sum_us: f64,
    /// The whole step in one pass, submitted and waited for, on the host clock.
    pub wall_us: f64,
    /// wall - sum: launches, barriers between dispatches, submission and the wait.
    pub gap_us: f64,
    /// wall / dispatches.
    pub wall_us_per_dispatch: f64,
    /// The host's part of the wall time: encoding the step's pass, before submitting it.
    #[serde(default)]
    pub host_encode_us: f64,
}

impl StepProfile {
    fn new(t: &RecordingTime, copy: &CopyRate) -> Self {
        let sum = t.sum_seconds();
        let copy_rate = copy.gb_per_s();
        let rows: Vec<ProfileRow> = t
            .dispatches
            .iter()
            .map(|d| {
                let gb_per_s = d.bytes as f64 / d.seconds.max(1e-12) / 1e9;
                ProfileRow {
                    kernel: d.kernel.clone(),
                    grid: d.grid,
                    bytes: d.bytes,
                    us: d.seconds * 1e6,
                    gb_per_s,
                    pct_of_copy: 100.0 * gb_per_s / copy_rate.max(1e-12),
                    share: d.seconds / sum.max(1e-12),
                }
            })
            .collect();
        let mut kernels: Vec<KernelShare> = Vec::new();
        for r in &rows {
            let family = r.kernel.split('{').next().unwrap_or(&r.kernel).to_string();
            match kernels.iter_mut().find(|k| k.kernel == family) {
                Some(k) => {
                    k.dispatches += 1;
                    k.us += r.us;
                    k.share += r.share;
                }
                None => kernels.push(KernelShare {
                    kernel: family,
                    dispatches: 1,
                    us: r.us,
                    share: r.share,
                }),
            }
        }
        kernels.sort_by(|a, b| b.us.total_cmp(&a.us));
        let n = rows.len();
        Self {
            rows,
            kernels,
            dispatches: n,
            sum_us: sum * 1e6,
            wall_us: t.wall_seconds * 1e6,
            gap_us: (t.wall_seconds - sum) * 1e6,
            wall_us_per_dispatch: t.wall_seconds * 1e6 / n.max(1) as f64,
            host_encode_us: t.encode_seconds * 1e6,
        }
    }

    /// host_encode / dispatches.
    pub fn host_encode_us_per_dispatch(&self) -> f64 {
        self.host_encode_us / self.dispatches.max(1) as f64
    }
}

/// A decoder's profile: a prefill and the decode step after it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecoderProfile {
    pub adapter: String,
    pub hidden_size: usize,
    pub layers: usize,
    pub attn_output: String,
    pub query: String,
    pub prompt_tokens: usize,
    /// Sequences decoded in the decode step (one row each).
    pub decode_rows: usize,
    pub method: TimingMethod,
    pub copy: CopyRate,
    pub copy_gb_per_s: f64,
    pub prefill: StepProfile,
    pub decode: StepProfile,
    /// Decode dispatches per layer, less the step's fixed ones (embedding, LM head,
    /// sampling) spread over the layers.
    pub decode_dispatches_per_layer: f64,
}

impl DecoderProfile {
    pub(super) fn new(
        gpu: &Gpu,
        config: &Config,
        prompt_tokens: usize,
        decode_rows: usize,
        prefill: RecordingTime,
        decode: RecordingTime,
        copy: CopyRate,
    ) -> Self {
        let decode_step = StepProfile::new(&decode, &copy);
        // Embedding, LM head and sampling: the three dispatches outside the layers.
        let per_layer = decode_step.dispatches.saturating_sub(3) as f64
            / config.num_hidden_layers.max(1) as f64;
        Self {
            adapter: gpu.describe(),
            hidden_size: config.hidden_size,
            layers: config.num_hidden_layers,
            attn_output: format!("{:?}", config.attn_output).to_lowercase(),
            query: format!("{:?}", config.query).to_lowercase(),
            prompt_tokens,
            decode_rows,
            method: decode.method,
            copy,
            copy_gb_per_s: copy.gb_per_s(),
            prefill: StepProfile::new(&prefill, &copy),
            decode: decode_step,
            decode_dispatches_per_layer: per_layer,
        }
    }

    /// The profile as text: the decode step's dispatches, then both steps' summaries.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} | d_model {} x {} layers, attn_output {}, query {} | timing: {}\n\
             copy shader: {:.2} GB/s over {} MiB\n\n",
            self.adapter,
            self.hidden_size,
            self.layers,
            self.attn_output,
            self.query,
            self.method.describe(),
            self.copy_gb_per_s,
            self.copy.bytes >> 21,
        );
        out += &match self.decode_rows {
            1 => "decode step (one token after the prompt):\n".to_string(),
            n => format!("decode step ({n} sequences, one token each after the prompt):\n"),
        };
        out += &format!(
            "{:>3}  {:<64} {:>10} {:>10} {:>8} {:>7} {:>6}\n",
            "#", "kernel", "us", "KiB bound", "GB/s", "% copy", "share"
        );
        for (i, r) in self.decode.rows.iter().enumerate() {
            let mut kernel = r.kernel.clone();
            if kernel.len() > 64 {
                kernel.truncate(61);
                kernel += "...";
            }
            out += &format!(
                "{i:>3}  {kernel:<64} {:>10.1} {:>10} {:>8.2} {:>6.1}% {:>5.1}%\n",
                r.us,
                r.bytes / 1024,
                r.gb_per_s,
                r.pct_of_copy,
                100.0 * r.share
            );
        }
        for (name, step) in [("decode", &self.decode), ("prefill", &self.prefill)] {
            out += &format!(
                "\n{name}: {} dispatches, sum {:.1} us, wall {:.1} us (gap {:.1} us, {:.2} us per \
                 dispatch; the host encodes it in {:.1} us, {:.2} us per dispatch)\n",
                step.dispatches,
                step.sum_us,
                step.wall_us,
                step.gap_us,
                step.wall_us_per_dispatch,
                step.host_encode_us,
                step.host_encode_us_per_dispatch()
            );
            for k in &step.kernels {
                out += &format!(
                    "  {:<28} {:>3} x {:>10.1} us {:>5.1}%\n",
                    k.kernel,
                    k.dispatches,
                    k.us,
                    100.0 * k.share
                );
            }
        }
        out += &format!(
            "\ndecode dispatches per layer: {:.2} (prompt of {} tokens)\n",
            self.decode_dispatches_per_layer, self.prompt_tokens
        );
        out
    }
}

/// How a decode step's time grows with its rows: per kernel family, the time of each
/// profile's step (ordered as given, the first the baseline) and its ratio to the first;
/// then the whole step's wall time and the aggregate rate it allows, tokens per second
/// over all rows (`rows / wall`), against the first profile's. Where a step of n rows
/// costs n times one row's, batching gains nothing; where it costs one row's, n times.
pub fn scaling_table(profiles: &[DecoderProfile]) -> String {
    let Some(base) = profiles.first() else {
        return String::new();
    };
    let mut out = String::from("decode step by rows (us; x the first column):\n");
    out += &format!("  {:<28}", "kernel");
    for p in profiles {
        out += &format!(" {:>18}", format!("{} rows", p.decode_rows));
    }
    out += "\n";
    let time = |p: &DecoderProfile, kernel: &str| {
        p.decode
            .kernels
            .iter()
            .find(|k| k.kernel == kernel)
            .map_or(0.0, |k| k.us)
    };
    for k in &base.decode.kernels {
        out += &format!("  {:<28}", k.kernel);
        for p in profiles {
            let us = time(p, &k.kernel);
            out += &format!(" {:>10.1} {:>6.2}x", us, us / k.us.max(1e-9));
        }
        out += "\n";
    }
    let row = |name: &str, f: &dyn Fn(&DecoderProfile) -> f64| {
        let mut line = format!("  {name:<28}");
        for p in profiles {
            line += &format!(" {:>10.1} {:>6.2}x", f(p), f(p) / f(base).max(1e-9));
        }
        line + "\n"
    };
    out += &row("sum of dispatches", &|p| p.decode.sum_us);
    out += &row("step wall", &|p| p.decode.wall_us);
    out += &row("tok/s over all rows", &|p| {
        p.decode_rows as f64 / (p.decode.wall_us.max(1e-9) * 1e-6)
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::test_gpus;
    use crate::model::AttnOutput;
    use crate::model::gpu::GpuDecoder;
    use crate::model::init::random_model;
    use crate::ops::WeightFormat;
    use crate::ops::attention::KvFormat;

    #[test]
    fn profile_times_every_dispatch_of_fused_decode_steps() {
        for gpu in test_gpus() {
            for attn_output in [AttnOutput::Dense, AttnOutput::Hadamard] {
                let config = Config {
                    hidden_size: 64,
                    num_hidden_layers: 2,
                    num_attention_heads: 4,
                    intermediate_size: 96,
                    vocab_size: 256,
                    max_position_embeddings: 32,
                    attn_output,
                    ..Default::default()
                };
                let model = random_model(&config, 7, WeightFormat::F16).unwrap();
                let mut dec = GpuDecoder::new(&gpu, &model, 3, 32, KvFormat::F16).unwrap();
                let p = pollster::block_on(dec.profile(&[10, 20, 30], 1, 2)).unwrap();
                // Fused layers: 5 dispatches with a dense W_O, 4 with the Hadamard one,
                // plus embedding, LM head and sampling.
                let per_layer = if attn_output == AttnOutput::Dense {
                    5
                } else {
                    4
                };
                assert_eq!(p.decode.dispatches, 2 * per_layer + 3, "{}", gpu.describe());
                assert_eq!(p.decode_dispatches_per_layer, per_layer as f64);
                assert!(p.prefill.dispatches > p.decode.dispatches);
                let shares: f64 = p.decode.rows.iter().map(|r| r.share).sum();
                assert!((shares - 1.0).abs() < 1e-9, "{shares}");
                assert!(p.decode.rows.iter().all(|r| r.bytes > 0 && r.us >= 0.0));
                assert!(p.copy_gb_per_s > 0.0 && p.decode.wall_us > 0.0);
                // Each run's encoding is the start of its wall time, so their medians
                // keep the order.
                for step in [&p.decode, &p.prefill] {
                    let (host, wall) = (step.host_encode_us, step.wall_us);
                    assert!(host > 0.0 && host < wall, "{host} of {wall} us");
                }
                let text = p.table();
                assert!(text.contains("matmul:gemv") && text.contains("attention:attend"));
                assert_eq!(dec.len(0), 4, "the prompt and one decoded token");
                // Three sequences in the step: the same dispatches over three rows, each
                // sequence left with the prompt and one token; 0 or 4 rows are refused.
                let three = pollster::block_on(dec.profile(&[10, 20, 30], 3, 1)).unwrap();
                assert_eq!(three.decode_rows, 3);
                assert_eq!(three.decode.dispatches, p.decode.dispatches);
                assert_eq!((0..3).map(|s| dec.len(s)).collect::<Vec<_>>(), [4, 4, 4]);
                let table = scaling_table(&[p, three]);
                assert!(table.contains("3 rows") && table.contains("tok/s over all rows"));
                for rows in [0, 4] {
                    let e = pollster::block_on(dec.profile(&[10, 20, 30], rows, 1));
                    assert!(e.unwrap_err().to_string().contains("1 to 3 sequences"));
                }
            }
        }
    }
}
