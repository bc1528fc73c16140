//! The KV write: a batch's key and value rows into their cache slots, in the cache's
//! format.

use super::attend::Split;
use super::{
    Attention, AttnParams, AttnShape, BINDINGS, Cols, ELEMENTWISE_WORKGROUP, distinct, pairs,
};
use crate::gpu::{GpuBuffer, GpuError, PipelineKey, Record, Shader};

/// Invocations per workgroup of kv_quant (one per (row, head, k or v), each holding its
/// head in private memory); passed as `EW_WG`.
const QUANT_WORKGROUP: u32 = 64;

impl Attention {
    /// Records `k_cache[seq][pos] = k[r]` and `v_cache[seq][pos] = v[r]` for every row r
    /// = (seq, pos) of `rows`; `k`, `v` are [rows, kv_d] (kv_heads heads), the caches hold `shape.kv`
    /// ([`AttnShape::cache_bytes`]; the quantized formats rotate, scale and pack each head
    /// as [`KvFormat::encode_head`](super::KvFormat::encode_head)). Two rows with the same (seq, pos) race.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_kv_write<'a>(
        &self,
        pass: &mut dyn Record,
        k: impl Into<Cols<'a>>,
        v: impl Into<Cols<'a>>,
        row_table: &GpuBuffer,
        rows: &[(u32, u32)],
        k_cache: &GpuBuffer,
        v_cache: &GpuBuffer,
        shape: AttnShape,
    ) -> Result<(), GpuError> {
        shape.validate()?;
        shape.check_rows(rows)?;
        let (k, v) = (k.into(), v.into());
        let (k_stride, k_off) = pairs(&k, "attention k rows", rows.len(), shape.kv_d())?;
        let (v_stride, v_off) = pairs(&v, "attention v rows", rows.len(), shape.kv_d())?;
        if k_stride != v_stride {
            return Err(GpuError::Validation(format!(
                "attention k and v rows must be equally wide ({} and {} values)",
                2 * k_stride,
                2 * v_stride
            )));
        }
        let (k, v) = (k.buffer, v.buffer);
        row_table.require("attention row table", rows.len() as u64 * 8)?;
        k_cache.require("attention k cache", shape.cache_bytes())?;
        v_cache.require("attention v cache", shape.cache_bytes())?;
        self.gpu
            .check_binding_size("attention KV cache", shape.cache_bytes())?;
        let inputs = [("k rows", k), ("v rows", v), ("row table", row_table)];
        distinct(("k cache", k_cache), &inputs)?;
        distinct(("v cache", v_cache), &inputs)?;
        if rows.is_empty() {
            return Ok(());
        }
        // f32 and f16: one invocation per value pair; the quantized formats: one per
        // (row, head, k or v), which holds the head to rotate it and find its scale.
        let (entry, wg, invocations) = match shape.kv.max_level() {
            None => (
                "kv_write",
                ELEMENTWISE_WORKGROUP,
                rows.len() * shape.kv_d() / 2,
            ),
            Some(_) => ("kv_quant", QUANT_WORKGROUP, rows.len() * shape.kv_heads * 2),
        };
        let key = PipelineKey::new(Shader::Attention, entry)
            .with("HD", shape.head_dim as u32)
            .with("EW_WG", wg)
            .with("KV", shape.kv.code())
            .with_flag("KV_ROT", shape.kv.rotated())
            .with("HM", shape.kv.rotation_order(shape.head_dim));
        let pipeline = self.gpu.pipeline(&key, &BINDINGS)?;
        let grid = self.gpu.grid(
            "attention kv_write",
            invocations.div_ceil(wg as usize) as u32,
        )?;
        let params = self.gpu.uniform(
            "attention kv_write params",
            &AttnParams {
                src_stride: k_stride,
                src_off: k_off,
                src_off2: v_off,
                ..Self::params(shape, rows.len(), grid.x, 0, Split::whole(shape))
            },
        );
        let rot_signs = self.rot_signs(shape);
        let signs = rot_signs.as_ref().unwrap_or(self.gpu.spare_uniform());
        let buffers = [
            params.buffer(),
            row_table.buffer(),
            k.buffer(),
            v.buffer(),
            k_cache.buffer(),
            v_cache.buffer(),
            self.dummy.buffer(),
            self.dummy2.buffer(),
            row_table.buffer(),
            signs.buffer(),
        ];
        self.gpu.dispatch(pass, &pipeline, &buffers, grid);
        Ok(())
    }
}

/// The reference of [`Attention::encode_kv_write`]: copies row r of `k` and `v` ([rows,
/// kv_d]) to entry (seq, pos) of the caches ([max_seqs, max_pos, kv_d]).
///
/// # Panics
/// If a slice is shorter than `shape` and `rows` say, or a row lies outside the cache.
pub fn kv_write_reference(
    k: &[f32],
    v: &[f32],
    rows: &[(u32, u32)],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    shape: AttnShape,
) {
    let d = shape.kv_d();
    for (r, &(seq, pos)) in rows.iter().enumerate() {
        let at = (seq as usize * shape.max_pos + pos as usize) * d;
        k_cache[at..at + d].copy_from_slice(&k[r * d..][..d]);
        v_cache[at..at + d].copy_from_slice(&v[r * d..][..d]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;
    use crate::gpu::testing::{test_gpus, test_values};
    use crate::ops::hadamard::cpu::{WhtSize, fwht};

    /// Uploads `k` and `v` ([rows, kv_d] each) and the row table, and runs kv_write of
    /// `rows` into the caches.
    fn write_rows(
        gpu: &Gpu,
        attn: &Attention,
        (k, v): (&[f32], &[f32]),
        rows: &[(u32, u32)],
        (k_cache, v_cache): (&GpuBuffer, &GpuBuffer),
        shape: AttnShape,
    ) {
        let (kb, vb, tb) = (upload(gpu, "k", k), upload(gpu, "v", v), table(gpu, rows));
        let mut enc = gpu.encoder("kv_write test");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            attn.encode_kv_write(&mut pass, &kb, &vb, &tb, rows, k_cache, v_cache, shape)
                .unwrap();
        }
        gpu.submit_and_wait(enc).unwrap();
    }

    #[test]
    fn kv_write_puts_rows_in_their_slots_and_nowhere_else() {
        let shape = AttnShape {
            heads: 3,
            kv_heads: 3,
            head_dim: 24,
            max_seqs: 3,
            max_pos: 8,
            kv: KvFormat::F32,
        };
        let rows = [(0, 0), (2, 5), (1, 7), (2, 0), (0, 3)];
        let n = rows.len() * shape.d();
        let cache_len = shape.max_seqs * shape.max_pos * shape.d();
        for gpu in test_gpus() {
            let attn = Attention::new(&gpu).unwrap();
            let (k, v) = (test_values(n, 1), test_values(n, 2));
            // Distinct values everywhere, so a misplaced or stray write shows.
            let mut kc: Vec<f32> = (0..cache_len).map(|i| -(i as f32)).collect();
            let mut vc: Vec<f32> = (0..cache_len).map(|i| i as f32 + 0.5).collect();
            let (kcb, vcb) = (upload(&gpu, "k cache", &kc), upload(&gpu, "v cache", &vc));
            write_rows(&gpu, &attn, (&k, &v), &rows, (&kcb, &vcb), shape);
            kv_write_reference(&k, &v, &rows, &mut kc, &mut vc, shape);
            let got_k: Vec<f32> = gpu.read(&kcb, cache_len).unwrap();
            let got_v: Vec<f32> = gpu.read(&vcb, cache_len).unwrap();
            assert!(got_k == kc, "k cache on {}", gpu.describe());
            assert!(got_v == vc, "v cache on {}", gpu.describe());
        }
    }

    #[test]
    fn f16_cache_rounds_to_nearest_even_like_the_cpu() {
        // One row of 16 values: ties (1 + 2^-11 rounds down to 1, 1 + 3 * 2^-11 up), a
        // value rounding into the next binade, subnormals and their tie, the largest
        // finite half, overflow to infinity, infinities, NaN, signed zero.
        let vals: [f32; 16] = [
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            -(2.0 - 2f32.powi(-12)),
            3.0e-6,
            -5.96e-8,
            2f32.powi(-25),
            3.0 * 2f32.powi(-25),
            65504.0,
            65519.0,
            65520.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -0.0,
            0.1,
            -1234.567,
        ];
        let shape = AttnShape {
            heads: 2,
            kv_heads: 2,
            head_dim: 8,
            max_seqs: 1,
            max_pos: 2,
            kv: KvFormat::F16,
        };
        let rows = [(0, 1)];
        for gpu in test_gpus() {
            let attn = Attention::new(&gpu).unwrap();
            let words = (shape.cache_bytes() / 4) as usize;
            let kcb = gpu
                .upload(MemoryCategory::Activations, "k cache", &vec![7u32; words])
                .unwrap();
            let vcb = gpu
                .upload(MemoryCategory::Activations, "v cache", &vec![7u32; words])
                .unwrap();
            let v: Vec<f32> = vals.iter().map(|x| -x).collect();
            write_rows(&gpu, &attn, (&vals, &v), &rows, (&kcb, &vcb), shape);
            for (cache, src) in [(&kcb, &vals[..]), (&vcb, &v[..])] {
                let got: Vec<u32> = gpu.read(cache, words).unwrap();
                // Position 0 untouched; position 1 holds the 16 halves, two per word.
                assert!(got[..8].iter().all(|&w| w == 7));
                for (i, x) in src.iter().enumerate() {
                    let half = (got[8 + i / 2] >> (16 * (i % 2))) & 0xffff;
                    let want = half::f16::from_f32(*x).to_bits() as u32;
                    assert_eq!(
                        half,
                        want,
                        "{x:e} on {}: {half:#06x} vs {want:#06x}",
                        gpu.describe()
                    );
                }
            }
        }
    }

    /// Asserts that the GPU's words of one head equal `kv.encode_head(x)`: the scale bit
    /// for bit, each level equal or, where x / scale lies within float rounding of a
    /// half-way point (the GPU's division need not round correctly), one step away.
    fn assert_head_words(gpu: &Gpu, kv: KvFormat, x: &[f32], got: &[u32], what: &str) {
        let want = kv.encode_head(x);
        assert_eq!(got[0], want[0], "{what} {kv} scale on {}", gpu.describe());
        let mut y = x.to_vec();
        if kv.rotated() {
            fwht(&mut y, WhtSize::new(x.len()).unwrap());
        }
        let scale = f32::from_bits(want[0]);
        let unpack = |w: &[u32]| -> Vec<i32> {
            let (bits, per) = (kv.bits(), 32 / kv.bits());
            (0..x.len())
                .map(|i| {
                    let f = w[1 + i / per] >> (bits * (i % per));
                    if bits == 8 {
                        f as u8 as i8 as i32
                    } else {
                        (f & 0xf) as i32 - 8
                    }
                })
                .collect()
        };
        let (g, w) = (unpack(got), unpack(&want));
        for i in 0..x.len() {
            let q = y[i] as f64 / scale as f64;
            let near_tie = (q - q.floor() - 0.5).abs() < 1e-5;
            assert!(
                g[i] == w[i] || ((g[i] - w[i]).abs() == 1 && near_tie),
                "{what} {kv} value {i} on {}: level {} vs {} ({q})",
                gpu.describe(),
                g[i],
                w[i]
            );
        }
        // Padding and the whole words past the levels match too.
        let per = 32 / kv.bits();
        if !x.len().is_multiple_of(per) {
            let last = want.len() - 1;
            let pad_mask = !0u32 << (kv.bits() * (x.len() % per));
            assert_eq!(
                got[last] & pad_mask,
                want[last] & pad_mask,
                "{what} {kv} padding"
            );
        }
    }

    #[test]
    fn quantized_caches_store_like_the_cpu_and_attend_like_the_reference() {
        // (format, heads, head_dim): odd head sizes without rotation (q8 of 10 pads its
        // last word, q4 of 24 its last nibbles), powers of two with it, and m x 2^k: 48 =
        // 12 x 4 (one sign word per row of H_12), 72 = 36 x 2 (two words per row of H_36).
        let cases = [
            (KvFormat::Q8, 3, 10),
            (KvFormat::Q4, 3, 24),
            (KvFormat::Q8Rot, 3, 16),
            (KvFormat::Q4Rot, 2, 32),
            (KvFormat::Q8Rot, 2, 48),
            (KvFormat::Q4Rot, 2, 72),
        ];
        // A prompt per sequence (prefill), then one row each (decode, split in 3 chunks).
        let first = runs(&[(1, 0, 9), (0, 0, 4)]);
        let next = [(1u32, 9u32), (0, 4)];
        for (gpu, tile) in gpus_and_tiles() {
            let attn = with_chunk(&gpu, 4).with_tile(tile);
            for (c, &(kv, heads, head_dim)) in cases.iter().enumerate() {
                let shape = AttnShape {
                    heads,
                    kv_heads: heads,
                    head_dim,
                    max_seqs: 2,
                    max_pos: 12,
                    kv,
                };
                let (d, hw) = (shape.d(), kv.head_words(head_dim));
                let words = (shape.cache_bytes() / 4) as usize;
                assert_eq!(words, 2 * 12 * heads * hw);
                let zeros = vec![0u32; words];
                let kcb = gpu
                    .upload(MemoryCategory::Activations, "k cache", &zeros)
                    .unwrap();
                let vcb = gpu
                    .upload(MemoryCategory::Activations, "v cache", &zeros)
                    .unwrap();
                for (i, rows) in [&first[..], &next[..]].into_iter().enumerate() {
                    // q, k and v side by side, as the decoder's fused projection writes them;
                    // k scaled up so heads differ in scale, v with an outlier per row.
                    let seed = 100 * c as u64 + 10 * i as u64;
                    let mut fused = test_values(rows.len() * 3 * d, seed);
                    for (r, row) in fused.chunks_mut(3 * d).enumerate() {
                        row[d..2 * d].iter_mut().for_each(|v| *v *= 4.0);
                        row[2 * d + (r * 7) % d] = 9.0;
                    }
                    let col = |k: usize| -> Vec<f32> {
                        fused
                            .chunks(3 * d)
                            .flat_map(|r| r[k * d..(k + 1) * d].to_vec())
                            .collect()
                    };
                    let (q, k, v) = (col(0), col(1), col(2));
                    let got = fused_write_and_attend(
                        &gpu,
                        &attn,
                        &fused,
                        rows,
                        &kcb,
                        &vcb,
                        shape,
                        i == 0,
                    );
                    let got_k: Vec<u32> = gpu.read(&kcb, words).unwrap();
                    let got_v: Vec<u32> = gpu.read(&vcb, words).unwrap();
                    let what = if i == 0 { "prefill" } else { "decode" };
                    // The stored heads, against the CPU's encoding of each.
                    for (r, &(seq, pos)) in rows.iter().enumerate() {
                        for h in 0..heads {
                            let blk = ((seq as usize * 12 + pos as usize) * heads + h) * hw;
                            let x = |src: &[f32]| src[r * d + h * head_dim..][..head_dim].to_vec();
                            assert_head_words(&gpu, kv, &x(&k), &got_k[blk..blk + hw], what);
                            assert_head_words(&gpu, kv, &x(&v), &got_v[blk..blk + hw], what);
                        }
                    }
                    // Attention over what the GPU stored, read back as the CPU decoder does.
                    let decode = |w: &[u32]| -> Vec<f32> {
                        w.chunks(hw)
                            .flat_map(|b| kv.decode_head(b, head_dim))
                            .collect()
                    };
                    let (kc, vc) = (decode(&got_k), decode(&got_v));
                    let what = format!("{kv} {what} {tile:?}");
                    check(&gpu, &what, &got, &q, &kc, &vc, rows, shape);
                }
            }
        }
    }

    /// `cache` ([positions, kv_heads, head_dim] values) with every KV head repeated for
    /// the `group` query heads that read it: the ungrouped cache of the same attention.
    fn repeat_heads(cache: &[f32], head_dim: usize, group: usize) -> Vec<f32> {
        cache
            .chunks(head_dim)
            .flat_map(|head| std::iter::repeat_n(head, group).flatten().copied())
            .collect()
    }

    #[test]
    fn grouped_heads_store_kv_heads_and_attend_like_repeated_heads() {
        // 8 query heads on 2 KV heads (4:1) and on 1 (8:1), head_dim 16, every cache
        // format: a prompt per sequence (prefill), then a decode row each split in 3 key
        // chunks, then one more without the split.
        let first = runs(&[(1, 0, 9), (0, 0, 4)]);
        // (rows, keys per decode chunk: None for prefill or the default chunk)
        type Step<'a> = (&'a [(u32, u32)], Option<usize>);
        let steps: [Step; 3] = [
            (&first, None),
            (&[(1, 9), (0, 4)], Some(4)),
            (&[(0, 5), (1, 10)], None),
        ];
        for (gpu, tile) in gpus_and_tiles() {
            for kv_heads in [2, 1] {
                for kv in KvFormat::ALL {
                    let (heads, head_dim) = (8, 16);
                    let shape = AttnShape {
                        heads,
                        kv_heads,
                        head_dim,
                        max_seqs: 2,
                        max_pos: 12,
                        kv,
                    };
                    let (d, kv_d, hw) = (shape.d(), shape.kv_d(), kv.head_words(head_dim));
                    let words = (shape.cache_bytes() / 4) as usize;
                    // The cache holds KV heads only.
                    assert_eq!(words, 2 * 12 * kv_heads * hw);
                    let zeros = vec![0u32; words];
                    let up = |label| {
                        gpu.upload(MemoryCategory::Activations, label, &zeros)
                            .unwrap()
                    };
                    let (kcb, vcb) = (up("k cache"), up("v cache"));
                    for (i, &(rows, chunk)) in steps.iter().enumerate() {
                        let attn = match chunk {
                            Some(keys) => with_chunk(&gpu, keys),
                            None => Attention::new(&gpu).unwrap(),
                        }
                        .with_tile(tile);
                        // [rows, q | k | v]: q d wide, k and v kv_d, as the decoder's fused
                        // projection writes them.
                        let w = d + 2 * kv_d;
                        let seed = 500 + 10 * kv_heads as u64 + i as u64;
                        let fused = test_values(rows.len() * w, seed);
                        let col = |from: usize, width: usize| -> Vec<f32> {
                            fused
                                .chunks(w)
                                .flat_map(|r| r[from..from + width].to_vec())
                                .collect()
                        };
                        let (q, k, v) = (col(0, d), col(d, kv_d), col(d + kv_d, kv_d));
                        let got = fused_write_and_attend(
                            &gpu,
                            &attn,
                            &fused,
                            rows,
                            &kcb,
                            &vcb,
                            shape,
                            i == 0,
                        );
                        let got_k: Vec<u32> = gpu.read(&kcb, words).unwrap();
                        let got_v: Vec<u32> = gpu.read(&vcb, words).unwrap();
                        let what = format!("{kv} {heads}:{kv_heads} step {i} {tile:?}");
                        // Each row's KV heads in their blocks, as the CPU encodes them.
                        for (r, &(seq, pos)) in rows.iter().enumerate() {
                            for h in 0..kv_heads {
                                let blk = ((seq as usize * 12 + pos as usize) * kv_heads + h) * hw;
                                let x = |src: &[f32]| {
                                    src[r * kv_d + h * head_dim..][..head_dim].to_vec()
                                };
                                for (src, got) in [(&k, &got_k), (&v, &got_v)] {
                                    let got = &got[blk..blk + hw];
                                    if kv.max_level().is_some() {
                                        assert_head_words(&gpu, kv, &x(src), got, &what);
                                    } else {
                                        // f32 and f16: bit for bit.
                                        assert_eq!(got, kv.encode_head(&x(src)), "{what}");
                                    }
                                }
                            }
                        }
                        // The attention over what the GPU stored against the ungrouped
                        // reference over the same cache with each KV head repeated.
                        let decode = |w: &[u32]| -> Vec<f32> {
                            let c: Vec<f32> = w
                                .chunks(hw)
                                .flat_map(|b| kv.decode_head(b, head_dim))
                                .collect();
                            repeat_heads(&c, head_dim, heads / kv_heads)
                        };
                        let full = AttnShape {
                            kv_heads: heads,
                            ..shape
                        };
                        let (kc, vc) = (decode(&got_k), decode(&got_v));
                        check(&gpu, &what, &got, &q, &kc, &vc, rows, full);
                    }
                }
            }
        }
    }
}
