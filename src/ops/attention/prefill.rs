//! Prefill: tiles of consecutive rows of one sequence share each block of keys.

use super::attend::{AttendBuffers, AttendTile, AttnTile, Split, plan_tiles};
use super::{Attention, AttnShape, tile_elems};
use crate::gpu::{GpuError, Record};

impl Attention {
    /// Records `out[r] = softmax(q[r] K^T / sqrt(head_dim)) V` per head for every row r =
    /// (seq, pos), over keys 0..=pos of seq (already in the cache). Rows of several sequences may share a call; runs of
    /// consecutive rows of one sequence share tiles, so keep a sequence's rows together.
    pub fn encode_prefill(
        &self,
        pass: &mut dyn Record,
        buffers: &AttendBuffers<'_>,
        rows: &[(u32, u32)],
        shape: AttnShape,
    ) -> Result<(), GpuError> {
        self.check_attend(buffers, rows, shape)?;
        if rows.is_empty() {
            return Ok(());
        }
        let tile = match self.tile {
            AttendTile::Auto => {
                AttnTile::prefill_on(&self.gpu, shape.head_dim, rows.len(), self.many_runs)
            }
            AttendTile::Staged => AttnTile::prefill(shape.head_dim, tile_elems(&self.gpu)),
            AttendTile::Direct => AttnTile::direct_prefill(shape.head_dim),
        };
        let plan = plan_tiles(rows, tile.rows);
        let whole = Split::whole(shape);
        self.dispatch_attend(pass, buffers, rows, shape, tile, &plan, whole, None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::AttnTile;
    use crate::gpu::testing::test_values;

    #[test]
    fn prefill_matches_reference_for_sequences_of_1_7_and_37_tokens() {
        let rows = runs(&[(2, 0, 37), (0, 0, 1), (1, 0, 7)]);
        for (gpu, tile) in gpus_and_tiles() {
            let attn = Attention::new(&gpu).unwrap().with_tile(tile);
            for heads in [1, 3] {
                for head_dim in [16, 24, 64, 128, MAX_HEAD_DIM] {
                    let shape = AttnShape {
                        heads,
                        kv_heads: heads,
                        head_dim,
                        max_seqs: 3,
                        max_pos: 40,
                        kv: KvFormat::F32,
                    };
                    let seed = (heads * 1000 + head_dim) as u64;
                    let what = format!("prefill, {tile:?}");
                    prefill_against_reference(&gpu, &attn, &rows, shape, seed, &what);
                }
            }
        }
    }

    #[test]
    fn short_prefill_on_cpu_adapters_takes_the_decode_tile_and_matches_reference() {
        let rows = runs(&[(2, 0, 37), (0, 0, 1), (1, 0, 7)]);
        for gpu in crate::gpu::testing::test_gpus() {
            // The tile Auto takes: row by row below SHORT_PREFILL_ROWS on a CPU adapter,
            // unless its kernels run many times.
            let (short, long, many) = (
                AttnTile::prefill_on(&gpu, 64, rows.len(), false),
                AttnTile::prefill_on(&gpu, 64, 128, false),
                AttnTile::prefill_on(&gpu, 64, rows.len(), true),
            );
            if gpu.favours_registers() {
                assert_eq!(short, AttnTile::direct_decode(64), "{}", gpu.describe());
                assert_eq!(long, AttnTile::direct_prefill(64), "{}", gpu.describe());
            } else {
                assert_eq!(short, long, "{}", gpu.describe());
            }
            assert_eq!(many, long, "{}", gpu.describe());
            let attn = Attention::new(&gpu).unwrap();
            for head_dim in [24, 64] {
                let shape = AttnShape {
                    heads: 3,
                    kv_heads: 3,
                    head_dim,
                    max_seqs: 3,
                    max_pos: 40,
                    kv: KvFormat::F32,
                };
                let seed = 3000 + head_dim as u64;
                prefill_against_reference(&gpu, &attn, &rows, shape, seed, "short prefill, Auto");
            }
        }
    }

    /// Writes keys and values of test values for `rows` into NaN caches (entries no row
    /// writes stay NaN: a kernel that reads one shows it), runs the prefill and checks it
    /// against the reference.
    fn prefill_against_reference(
        gpu: &Gpu,
        attn: &Attention,
        rows: &[(u32, u32)],
        shape: AttnShape,
        seed: u64,
        what: &str,
    ) {
        let n = rows.len() * shape.d();
        let q: Vec<f32> = test_values(n, seed).iter().map(|v| 3.0 * v).collect();
        let (k, v) = (test_values(n, seed + 1), test_values(n, seed + 2));
        let cache_len = shape.max_seqs * shape.max_pos * shape.d();
        let (mut kc, mut vc) = (vec![f32::NAN; cache_len], vec![f32::NAN; cache_len]);
        let kcb = upload(gpu, "k cache", &kc);
        let vcb = upload(gpu, "v cache", &vc);
        let got = write_and_prefill(gpu, attn, &q, &k, &v, rows, &kcb, &vcb, shape);
        kv_write_reference(&k, &v, rows, &mut kc, &mut vc, shape);
        check(gpu, what, &got, &q, &kc, &vc, rows, shape);
    }

    #[test]
    fn prefill_continues_cached_prefixes_with_rows_out_of_order() {
        let shape = AttnShape {
            heads: 3,
            kv_heads: 3,
            head_dim: 64,
            max_seqs: 2,
            max_pos: 48,
            kv: KvFormat::F32,
        };
        // A first chunk of each sequence, then the next chunks with sequence 1 in two runs
        // around sequence 0, whose rows start at position 20.
        let first = runs(&[(0, 0, 20), (1, 0, 5)]);
        let second = runs(&[(1, 5, 4), (0, 20, 10), (1, 9, 6)]);
        let cache_len = shape.max_seqs * shape.max_pos * shape.d();
        for (gpu, tile) in gpus_and_tiles() {
            let attn = Attention::new(&gpu).unwrap().with_tile(tile);
            let (mut kc, mut vc) = (vec![f32::NAN; cache_len], vec![f32::NAN; cache_len]);
            let kcb = upload(&gpu, "k cache", &kc);
            let vcb = upload(&gpu, "v cache", &vc);
            for (i, rows) in [&first, &second].into_iter().enumerate() {
                let n = rows.len() * shape.d();
                let seed = 77 + 3 * i as u64;
                let q: Vec<f32> = test_values(n, seed).iter().map(|v| 3.0 * v).collect();
                let (k, v) = (test_values(n, seed + 1), test_values(n, seed + 2));
                let got = write_and_prefill(&gpu, &attn, &q, &k, &v, rows, &kcb, &vcb, shape);
                kv_write_reference(&k, &v, rows, &mut kc, &mut vc, shape);
                let what = format!("chunked prefill, {tile:?}");
                check(&gpu, &what, &got, &q, &kc, &vc, rows, shape);
            }
        }
    }
}
