//! Decode: one workgroup per (row, head), long contexts split into chunks and reduced,
//! and the fused form that also ropes and writes the row's key and value.

use super::attend::{AttendBuffers, AttendTile, AttnTile, Split, plan_tiles};
use super::{Attention, AttnShape, Cols, distinct, tile_elems};
use crate::gpu::{GpuError, MemoryCategory, Record};
use crate::ops::rope::RopeTable;

/// The work of rope and the KV write that the fused decode ([`Attention::encode_decode_fused`])
/// does inside attend: where k and v are (the same buffer as q) and the RoPE table.
#[derive(Clone, Copy)]
pub struct DecodeFusion<'a> {
    pub k: Cols<'a>,
    pub v: Cols<'a>,
    pub rope: &'a RopeTable,
}

impl Attention {
    /// Sets the keys per chunk of the split decode (default [`DECODE_CHUNK`](super::DECODE_CHUNK)): contexts
    /// longer than this are split. Small values let tests and benchmarks take the split
    /// path with short contexts.
    pub fn with_decode_chunk(mut self, keys: usize) -> Result<Self, GpuError> {
        if keys == 0 || keys > u32::MAX as usize {
            return Err(GpuError::Validation(format!(
                "decode chunk of {keys} keys: must be between 1 and {}",
                u32::MAX
            )));
        }
        self.decode_chunk = keys;
        Ok(self)
    }

    pub fn decode_chunk(&self) -> usize {
        self.decode_chunk
    }

    /// Chunks encode_decode splits the keys of `rows` into: 1 when the longest context
    /// fits one chunk, else that context over the chunk length.
    pub fn decode_chunks(&self, rows: &[(u32, u32)]) -> usize {
        let context = rows.iter().map(|r| r.1 as usize + 1).max().unwrap_or(0);
        if context <= self.decode_chunk {
            1
        } else {
            context.div_ceil(self.decode_chunk)
        }
    }

    /// Records the same function as [`Self::encode_prefill`] for a batch of single query
    /// rows (typically one per sequence, each at its own position). One workgroup per
    /// (row, head), or per (row, head, chunk) with a reduce dispatch after when the longest
    /// context exceeds the decode chunk (see [`Self::decode_chunks`]).
    pub fn encode_decode(
        &self,
        pass: &mut dyn Record,
        buffers: &AttendBuffers<'_>,
        rows: &[(u32, u32)],
        shape: AttnShape,
    ) -> Result<(), GpuError> {
        self.decode(pass, buffers, rows, shape, None)
    }

    /// [`Self::encode_decode`] with RoPE of q and k and the KV write of every row done in
    /// the same dispatch (the work of [`crate::ops::rope::encode_rope`] on q and k, then
    /// [`Self::encode_kv_write`], in the same arithmetic): `buffers.q`, `fusion.k` and
    /// `fusion.v` are column windows of one buffer (the decoder's fused q | k | v rows),
    /// unrotated. Every row must be the only one of its sequence in the call, and the
    /// shape ungrouped (`kv_heads == heads`).
    pub fn encode_decode_fused(
        &self,
        pass: &mut dyn Record,
        buffers: &AttendBuffers<'_>,
        fusion: DecodeFusion<'_>,
        rows: &[(u32, u32)],
        shape: AttnShape,
    ) -> Result<(), GpuError> {
        let AttendBuffers {
            q,
            k_cache,
            v_cache,
            row_table,
            ..
        } = *buffers;
        if fusion.k.buffer.buffer() != q.buffer.buffer()
            || fusion.v.buffer.buffer() != q.buffer.buffer()
        {
            return Err(GpuError::Validation(
                "fused decode attention: q, k and v must be columns of one buffer".into(),
            ));
        }
        if shape.kv_heads != shape.heads {
            // Each query head's workgroup writes its KV head: with grouping, the heads of
            // a group would write one block from several workgroups while others read it.
            return Err(GpuError::Validation(format!(
                "fused decode attention needs one KV head per query head ({} KV heads for {} \
                 heads): write the cache with encode_kv_write and attend with encode_decode",
                shape.kv_heads, shape.heads
            )));
        }
        if fusion.rope.head_dim() != shape.head_dim || fusion.rope.max_positions() < shape.max_pos {
            return Err(GpuError::Validation(format!(
                "fused decode attention: the RoPE table ({} positions of head_dim {}) does not \
                 cover the cache ({} positions of head_dim {})",
                fusion.rope.max_positions(),
                fusion.rope.head_dim(),
                shape.max_pos,
                shape.head_dim
            )));
        }
        let mut seqs: Vec<u32> = rows.iter().map(|r| r.0).collect();
        seqs.sort_unstable();
        if seqs.windows(2).any(|w| w[0] == w[1]) {
            return Err(GpuError::Validation(
                "fused decode attention takes one row per sequence".into(),
            ));
        }
        let inputs = [("q, k and v rows", q.buffer), ("row table", row_table)];
        distinct(("k cache", k_cache), &inputs)?;
        distinct(("v cache", v_cache), &inputs)?;
        self.decode(pass, buffers, rows, shape, Some(fusion))
    }

    fn decode(
        &self,
        pass: &mut dyn Record,
        buffers: &AttendBuffers<'_>,
        rows: &[(u32, u32)],
        shape: AttnShape,
        fusion: Option<DecodeFusion<'_>>,
    ) -> Result<(), GpuError> {
        self.check_attend(buffers, rows, shape)?;
        if rows.is_empty() {
            return Ok(());
        }
        let tile = match self.tile {
            AttendTile::Auto => AttnTile::decode_on(&self.gpu, shape.head_dim),
            AttendTile::Staged => AttnTile::decode(shape.head_dim, tile_elems(&self.gpu)),
            AttendTile::Direct => AttnTile::direct_decode(shape.head_dim),
        };
        let plan = plan_tiles(rows, 1);
        let chunks = self.decode_chunks(rows);
        if chunks == 1 {
            let whole = Split::whole(shape);
            return self
                .dispatch_attend(pass, buffers, rows, shape, tile, &plan, whole, None, fusion);
        }
        let split = Split {
            chunks,
            chunk_len: self.decode_chunk,
        };
        // One (acc [head_dim / 2 pairs], (m, l)) per (row, head, chunk), in vec2 pairs.
        let pairs = (rows.len() * shape.heads) as u64 * (chunks * (shape.head_dim / 2 + 1)) as u64;
        if pairs > u32::MAX as u64 {
            return Err(GpuError::Validation(format!(
                "split decode of {} rows x {chunks} chunks exceeds 32-bit indexing",
                rows.len()
            )));
        }
        let bytes = pairs * 8;
        let mut partials = self.partials.lock().unwrap_or_else(|p| p.into_inner());
        let scratch = match partials.take() {
            Some(s) if s.size() >= bytes => s,
            old => {
                drop(old); // free the old one before allocating
                self.gpu
                    .storage(MemoryCategory::Scratch, "attention partials", bytes)?
            }
        };
        let result = self.dispatch_attend(
            pass,
            buffers,
            rows,
            shape,
            tile,
            &plan,
            split,
            Some(&scratch),
            fusion,
        );
        *partials = Some(scratch);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;
    use crate::gpu::testing::{test_gpus, test_values};

    #[test]
    fn decode_chunks_follow_the_adapters_size() {
        // A GPU's 256 workgroups: 32 heads split a full 2048 context in 8, 8 heads in 32.
        assert_eq!(chunk_for(256, 32, 2048), 256);
        assert_eq!(chunk_for(256, 8, 2048), 64);
        assert_eq!(chunk_for(256, 8, 4096), 128);
        // Never under MIN_DECODE_CHUNK; a CPU adapter's threads are filled by the heads.
        assert_eq!(chunk_for(256, 1, 100), MIN_DECODE_CHUNK);
        assert_eq!(chunk_for(2, 8, 2048), 2048);
        assert_eq!(chunk_for(16, 8, 2048), 1024);
        for gpu in test_gpus() {
            let chunk = decode_chunk_for(&gpu, 8, 1024);
            assert_eq!(
                chunk,
                chunk_for(gpu.parallelism(), 8, 1024),
                "{}",
                gpu.describe()
            );
        }
    }

    #[test]
    fn decode_splits_only_contexts_longer_than_the_chunk() {
        for gpu in test_gpus() {
            let attn = Attention::new(&gpu).unwrap();
            assert_eq!(attn.decode_chunk(), DECODE_CHUNK);
            assert_eq!(attn.decode_chunks(&[(0, 255), (1, 3)]), 1);
            assert_eq!(attn.decode_chunks(&[(0, 256), (1, 3)]), 2);
            let attn = attn.with_decode_chunk(32).unwrap();
            assert_eq!(attn.decode_chunks(&[(0, 31)]), 1);
            assert_eq!(attn.decode_chunks(&[(0, 32)]), 2);
            assert_eq!(attn.decode_chunks(&[(0, 5), (1, 299)]), 10);
            assert!(Attention::new(&gpu).unwrap().with_decode_chunk(0).is_err());
        }
    }

    #[test]
    fn decode_matches_reference_with_and_without_the_split() {
        // (heads, head_dim, decode chunk, positions of the rows, chunks expected)
        let cases: [(usize, usize, usize, &[u32], usize); 5] = [
            (3, 64, 32, &[0, 31, 32, 100, 299], 10),
            (1, MAX_HEAD_DIM, 64, &[5, 130, 200], 4),
            (1, 128, 32, &[3, 64], 3),
            (3, 24, DECODE_CHUNK, &[0, 17, 150], 1),
            (3, 16, 32, &[1, 31], 1),
        ];
        for gpu in test_gpus() {
            for (&(heads, head_dim, chunk, positions, chunks), tile) in with_tiles(&cases) {
                let attn = with_chunk(&gpu, chunk).with_tile(tile);
                let shape = AttnShape {
                    heads,
                    kv_heads: heads,
                    head_dim,
                    max_seqs: positions.len(),
                    max_pos: 300,
                    kv: KvFormat::F32,
                };
                let d = shape.d();
                // Row r is sequence len - 1 - r, so rows and sequences differ.
                let rows: Vec<(u32, u32)> = positions
                    .iter()
                    .enumerate()
                    .map(|(r, &p)| ((positions.len() - 1 - r) as u32, p))
                    .collect();
                assert_eq!(attn.decode_chunks(&rows), chunks, "{shape:?}");
                let seed = (heads * 1000 + head_dim) as u64;
                let cache_len = shape.max_seqs * shape.max_pos * d;
                let mut kc = test_values(cache_len, seed);
                let mut vc = test_values(cache_len, seed + 1);
                // Positions past each row's own are NaN: the causal mask must skip them.
                for &(seq, pos) in &rows {
                    let from = (seq as usize * shape.max_pos + pos as usize + 1) * d;
                    let to = (seq as usize + 1) * shape.max_pos * d;
                    kc[from..to].fill(f32::NAN);
                    vc[from..to].fill(f32::NAN);
                }
                let q: Vec<f32> = test_values(rows.len() * d, seed + 2)
                    .iter()
                    .map(|v| 3.0 * v)
                    .collect();
                let (qb, tb) = (upload(&gpu, "q", &q), table(&gpu, &rows));
                let (kcb, vcb) = (upload(&gpu, "k cache", &kc), upload(&gpu, "v cache", &vc));
                // One row more than the batch: it must keep its sentinel.
                let n = rows.len() * d;
                let out = upload(&gpu, "out", &vec![7.0f32; n + d]);
                let mut enc = gpu.encoder("decode test");
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    attn.encode_decode(
                        &mut pass,
                        &AttendBuffers::new(&qb, &kcb, &vcb, &tb, &out),
                        &rows,
                        shape,
                    )
                    .unwrap();
                }
                gpu.submit_and_wait(enc).unwrap();
                let got: Vec<f32> = gpu.read(&out, n + d).unwrap();
                let what = format!("decode {tile:?}");
                check(&gpu, &what, &got[..n], &q, &kc, &vc, &rows, shape);
                assert!(
                    got[n..].iter().all(|&x| x == 7.0),
                    "decode wrote past its rows"
                );
            }
        }
    }

    #[test]
    fn fused_decode_equals_rope_kv_write_and_decode() {
        // (heads, head_dim, decode chunk, positions of the rows): one chunk, and the split
        // with the row's position in a middle and in the last chunk.
        let cases: [(usize, usize, usize, &[u32]); 3] = [
            (2, 8, DECODE_CHUNK, &[0, 5, 20]),
            (3, 16, 4, &[3, 9, 17]),
            (1, 64, 8, &[8, 30]),
        ];
        for gpu in test_gpus() {
            for (&(heads, head_dim, chunk, positions), tile) in with_tiles(&cases) {
                for kv in KvFormat::ALL {
                    let attn = with_chunk(&gpu, chunk).with_tile(tile);
                    let shape = AttnShape {
                        heads,
                        kv_heads: heads,
                        head_dim,
                        max_seqs: positions.len(),
                        max_pos: 32,
                        kv,
                    };
                    let d = shape.d();
                    let rope = RopeTable::new(&gpu, shape.max_pos, head_dim, 10000.0).unwrap();
                    // Rows in reverse sequence order; earlier positions hold random heads.
                    let rows: Vec<(u32, u32)> = positions
                        .iter()
                        .enumerate()
                        .map(|(r, &p)| ((positions.len() - 1 - r) as u32, p))
                        .collect();
                    let seed = (heads * 100 + head_dim) as u64;
                    let words = (shape.cache_bytes() / 4) as usize;
                    // Every position of every sequence holds a head written by kv_write.
                    let all: Vec<(u32, u32)> = (0..shape.max_seqs as u32)
                        .flat_map(|s| (0..shape.max_pos as u32).map(move |p| (s, p)))
                        .collect();
                    let kb = upload(&gpu, "k", &test_values(all.len() * d, seed));
                    let vb = upload(&gpu, "v", &test_values(all.len() * d, seed + 1));
                    let kcb0 = gpu
                        .storage(MemoryCategory::KvCache, "k", shape.cache_bytes())
                        .unwrap();
                    let vcb0 = gpu
                        .storage(MemoryCategory::KvCache, "v", shape.cache_bytes())
                        .unwrap();
                    let mut enc = gpu.encoder("fill caches");
                    {
                        let mut pass = enc.begin_compute_pass(&Default::default());
                        let t = table(&gpu, &all);
                        attn.encode_kv_write(&mut pass, &kb, &vb, &t, &all, &kcb0, &vcb0, shape)
                            .unwrap();
                    }
                    gpu.submit_and_wait(enc).unwrap();
                    let kc0: Vec<u32> = gpu.read(&kcb0, words).unwrap();
                    let vc0: Vec<u32> = gpu.read(&vcb0, words).unwrap();
                    let qkv = test_values(rows.len() * 3 * d, seed + 2);
                    let tb = table(&gpu, &rows);
                    let run = |fused: bool| {
                        let fb = upload(&gpu, "qkv", &qkv);
                        let up = |label: &str, w: &[u32]| {
                            gpu.upload(MemoryCategory::KvCache, label, w).unwrap()
                        };
                        let (kcb, vcb) = (up("k cache", &kc0), up("v cache", &vc0));
                        let out = upload(&gpu, "out", &vec![0f32; rows.len() * d]);
                        let (qc, kc, vc) = (
                            Cols::new(&fb, 3 * d, 0),
                            Cols::new(&fb, 3 * d, d),
                            Cols::new(&fb, 3 * d, 2 * d),
                        );
                        let mut enc = gpu.encoder("fused decode test");
                        {
                            let mut pass = enc.begin_compute_pass(&Default::default());
                            let p = &mut pass;
                            if fused {
                                let fusion = DecodeFusion {
                                    k: kc,
                                    v: vc,
                                    rope: &rope,
                                };
                                attn.encode_decode_fused(
                                    p,
                                    &AttendBuffers::new(qc, &kcb, &vcb, &tb, &out),
                                    fusion,
                                    &rows,
                                    shape,
                                )
                                .unwrap();
                            } else {
                                let n = rows.len();
                                crate::ops::rope::encode_rope(
                                    &gpu,
                                    p,
                                    qc,
                                    &tb,
                                    &rope,
                                    n,
                                    2 * heads,
                                )
                                .unwrap();
                                attn.encode_kv_write(p, kc, vc, &tb, &rows, &kcb, &vcb, shape)
                                    .unwrap();
                                attn.encode_decode(
                                    p,
                                    &AttendBuffers::new(qc, &kcb, &vcb, &tb, &out),
                                    &rows,
                                    shape,
                                )
                                .unwrap();
                            }
                        }
                        gpu.submit_and_wait(enc).unwrap();
                        let read = |b: &GpuBuffer| -> Vec<u32> { gpu.read(b, words).unwrap() };
                        (
                            read(&kcb),
                            read(&vcb),
                            gpu.read::<f32>(&out, rows.len() * d).unwrap(),
                        )
                    };
                    let (k_a, v_a, out_a) = run(false);
                    let (k_b, v_b, out_b) = run(true);
                    let what = format!("{shape:?} {tile:?} chunk {chunk} on {}", gpu.describe());
                    assert!(k_a == k_b, "{what}: the fused decode wrote other keys");
                    assert!(v_a == v_b, "{what}: the fused decode wrote other values");
                    for (i, (a, b)) in out_a.iter().zip(&out_b).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-6 * (1.0 + a.abs()),
                            "{what}: out[{i}] {b} vs {a} unfused"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn fused_decode_refuses_grouped_heads() {
        let shape = AttnShape {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            max_seqs: 1,
            max_pos: 4,
            kv: KvFormat::F16,
        };
        let rows = [(0, 1)];
        for gpu in test_gpus() {
            let attn = Attention::new(&gpu).unwrap();
            let rope = RopeTable::new(&gpu, 4, 8, 10000.0).unwrap();
            let w = shape.d() + 2 * shape.kv_d();
            let fb = upload(&gpu, "qkv", &vec![0f32; w]);
            let cache = upload(&gpu, "cache", &vec![0f32; 64]);
            let (tb, out) = (table(&gpu, &rows), upload(&gpu, "out", &[0f32; 32]));
            let fusion = DecodeFusion {
                k: Cols::new(&fb, w, 32),
                v: Cols::new(&fb, w, 48),
                rope: &rope,
            };
            let mut enc = gpu.encoder("grouped fused decode");
            let mut pass = enc.begin_compute_pass(&Default::default());
            let io = AttendBuffers::new(Cols::new(&fb, w, 0), &cache, &cache, &tb, &out);
            let e = attn
                .encode_decode_fused(&mut pass, &io, fusion, &rows, shape)
                .unwrap_err()
                .to_string();
            assert!(e.contains("one KV head per query head"), "{e}");
        }
    }

    #[test]
    fn f16_cache_and_fused_rows_attend_like_the_reference() {
        // q, k and v side by side in one [rows, q | k | v] buffer (as the decoder's fused
        // projection writes them), an f16 cache; prefill a prompt, then decode one row.
        let shape = AttnShape {
            heads: 3,
            kv_heads: 3,
            head_dim: 16,
            max_seqs: 2,
            max_pos: 24,
            kv: KvFormat::F16,
        };
        let d = shape.d();
        let first = runs(&[(1, 0, 9), (0, 0, 4)]);
        let next = [(1u32, 9u32), (0, 4)];
        for (gpu, tile) in gpus_and_tiles() {
            let attn = Attention::new(&gpu).unwrap().with_tile(tile);
            let words = (shape.cache_bytes() / 4) as usize;
            let kcb = gpu
                .upload(MemoryCategory::Activations, "k cache", &vec![0u32; words])
                .unwrap();
            let vcb = gpu
                .upload(MemoryCategory::Activations, "v cache", &vec![0u32; words])
                .unwrap();
            let cache_len = shape.max_seqs * shape.max_pos * d;
            let (mut kc, mut vc) = (vec![0f32; cache_len], vec![0f32; cache_len]);
            for (i, rows) in [&first[..], &next[..]].into_iter().enumerate() {
                let fused = test_values(rows.len() * 3 * d, 30 + i as u64);
                let col = |c: usize| -> Vec<f32> {
                    fused
                        .chunks(3 * d)
                        .flat_map(|r| r[c * d..(c + 1) * d].to_vec())
                        .collect()
                };
                let (q, k, v) = (col(0), col(1), col(2));
                let got =
                    fused_write_and_attend(&gpu, &attn, &fused, rows, &kcb, &vcb, shape, i == 0);
                kv_write_reference(&k, &v, rows, &mut kc, &mut vc, shape);
                KvFormat::F16.store(&mut kc, shape.head_dim);
                KvFormat::F16.store(&mut vc, shape.head_dim);
                let step = if i == 0 { "prefill" } else { "decode" };
                let what = format!("f16 {step} {tile:?}");
                check(&gpu, &what, &got, &q, &kc, &vc, rows, shape);
            }
        }
    }
}
