//! What the attention tests share: uploads, the error bound against the f64 reference,
//! and write-then-attend in one pass.

use super::*;

pub(super) fn upload(gpu: &Gpu, label: &str, data: &[f32]) -> GpuBuffer {
    gpu.upload(MemoryCategory::Activations, label, data)
        .unwrap()
}

pub(super) fn table(gpu: &Gpu, rows: &[(u32, u32)]) -> GpuBuffer {
    gpu.upload(MemoryCategory::Activations, "row table", &row_table(rows))
        .unwrap()
}

/// Rows 0..len of each (seq, start, len), one sequence after another.
pub(super) fn runs(seqs: &[(u32, u32, u32)]) -> Vec<(u32, u32)> {
    seqs.iter()
        .flat_map(|&(s, start, len)| (start..start + len).map(move |p| (s, p)))
        .collect()
}

/// The error bound of each (row, head) of the f32 kernels against the f64 reference,
/// with eps the f32 epsilon, V = max |v| and n = pos + 1 keys:
/// - a score is a dot product of head_dim terms, plus the scale applied to q: its error
///   is at most (head_dim + 1) eps A, A = max over keys of scale * sum |q_c k_c|; score
///   errors move the softmax weights by at most twice that, relatively;
/// - the sums of p and p * v over n keys, the rescales of the online softmax and of
///   the chunk reduce: at most 4 n eps relative to V;
/// - exp (WGSL allows 3 + 2|x| ulp, on weights e^x that make |x| e^x < 1) and the
///   final division: 32 eps V.
pub(super) fn tolerance(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    rows: &[(u32, u32)],
    shape: AttnShape,
) -> Vec<f64> {
    let (d, kv_d, hd) = (shape.d(), shape.kv_d(), shape.head_dim);
    let eps = f32::EPSILON as f64;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut tol = Vec::new();
    for (r, &(seq, pos)) in rows.iter().enumerate() {
        for h in 0..shape.heads {
            let (mut a, mut v) = (0f64, 0f64);
            for j in 0..=pos as usize {
                let at = (seq as usize * shape.max_pos + j) * kv_d + h / shape.group() * hd;
                let qk: f64 = (0..hd)
                    .map(|c| (q[r * d + h * hd + c] as f64 * k_cache[at + c] as f64).abs())
                    .sum();
                a = a.max(scale * qk);
                v = (0..hd).fold(v, |m, c| m.max(v_cache[at + c].abs() as f64));
            }
            let n = pos as f64 + 1.0;
            let mut t = eps * v * (2.0 * (hd as f64 + 1.0) * a + 4.0 * n + 32.0);
            if shape.kv.rotated() {
                // Rotating q and the output (log2(hd) butterfly stages, each adding an
                // error of eps times a sum that grows to sqrt(hd) times a value) and the
                // reference's own rotation back of the stored heads.
                let stages = hd.ilog2() as f64 + 1.0;
                t = stages * (t + eps * v * 4.0 * hd as f64 * (a + 1.0));
            }
            tol.push(t);
        }
    }
    tol
}

/// Asserts `got` ([rows, d]) matches the reference within [`tolerance`].
#[allow(clippy::too_many_arguments)]
pub(super) fn check(
    gpu: &Gpu,
    what: &str,
    got: &[f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    rows: &[(u32, u32)],
    shape: AttnShape,
) {
    let want = attention_reference(q, k_cache, v_cache, rows, shape);
    let tol = tolerance(q, k_cache, v_cache, rows, shape);
    let (d, hd) = (shape.d(), shape.head_dim);
    for (r, row) in rows.iter().enumerate() {
        for h in 0..shape.heads {
            for c in 0..hd {
                let i = r * d + h * hd + c;
                let err = (got[i] as f64 - want[i]).abs();
                let t = tol[r * shape.heads + h];
                assert!(
                    err <= t,
                    "{what} {shape:?} on {}: row {r} {row:?} head {h} column {c}: got {}, \
                     want {} (error {err:e} > tolerance {t:e})",
                    gpu.describe(),
                    got[i],
                    want[i]
                );
            }
        }
    }
}

/// Writes the k and v columns of `fused` ([rows, q | k | v], q d wide, k and v kv_d) into
/// the caches for `rows`, then attends their q columns: prefill when `prefill`, else
/// decode. Returns the attention output, [rows, d].
#[allow(clippy::too_many_arguments)]
pub(super) fn fused_write_and_attend(
    gpu: &Gpu,
    attn: &Attention,
    fused: &[f32],
    rows: &[(u32, u32)],
    kcb: &GpuBuffer,
    vcb: &GpuBuffer,
    shape: AttnShape,
    prefill: bool,
) -> Vec<f32> {
    let (d, kv_d) = (shape.d(), shape.kv_d());
    let w = d + 2 * kv_d;
    let fb = upload(gpu, "qkv", fused);
    let tb = table(gpu, rows);
    let out = upload(gpu, "out", &vec![0f32; rows.len() * d]);
    let mut enc = gpu.encoder("fused rows test");
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        let (qc, kc, vc) = (
            Cols::new(&fb, w, 0),
            Cols::new(&fb, w, d),
            Cols::new(&fb, w, d + kv_d),
        );
        attn.encode_kv_write(&mut pass, kc, vc, &tb, rows, kcb, vcb, shape)
            .unwrap();
        if prefill {
            attn.encode_prefill(
                &mut pass,
                &AttendBuffers::new(qc, kcb, vcb, &tb, &out),
                rows,
                shape,
            )
        } else {
            attn.encode_decode(
                &mut pass,
                &AttendBuffers::new(qc, kcb, vcb, &tb, &out),
                rows,
                shape,
            )
        }
        .unwrap();
    }
    gpu.submit_and_wait(enc).unwrap();
    gpu.read(&out, rows.len() * d).unwrap()
}

/// Writes the `k`, `v` rows into the caches and runs prefill over `rows`, in one pass;
/// returns the output.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_and_prefill(
    gpu: &Gpu,
    attn: &Attention,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    rows: &[(u32, u32)],
    k_cache: &GpuBuffer,
    v_cache: &GpuBuffer,
    shape: AttnShape,
) -> Vec<f32> {
    let n = rows.len() * shape.d();
    let (qb, kb, vb) = (
        upload(gpu, "q", q),
        upload(gpu, "k", k),
        upload(gpu, "v", v),
    );
    let tb = table(gpu, rows);
    let out = upload(gpu, "out", &vec![0f32; n]);
    let mut enc = gpu.encoder("attention test");
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        attn.encode_kv_write(&mut pass, &kb, &vb, &tb, rows, k_cache, v_cache, shape)
            .unwrap();
        attn.encode_prefill(
            &mut pass,
            &AttendBuffers::new(&qb, k_cache, v_cache, &tb, &out),
            rows,
            shape,
        )
        .unwrap();
    }
    gpu.submit_and_wait(enc).unwrap();
    gpu.read(&out, n).unwrap()
}

/// Both ways attend reads keys and values, whatever the adapter would take
/// ([`AttendTile::Auto`]: direct on this machine's CPU adapters).
pub(super) const TILES: [AttendTile; 2] = [AttendTile::Staged, AttendTile::Direct];

/// Every test adapter with each of [`TILES`].
pub(super) fn gpus_and_tiles() -> Vec<(Gpu, AttendTile)> {
    crate::gpu::testing::test_gpus()
        .into_iter()
        .flat_map(|gpu| TILES.map(|tile| (gpu.clone(), tile)))
        .collect()
}

/// Each case with each of [`TILES`].
pub(super) fn with_tiles<T>(cases: &[T]) -> impl Iterator<Item = (&T, AttendTile)> {
    cases
        .iter()
        .flat_map(|case| TILES.map(move |tile| (case, tile)))
}

/// An [`Attention`] whose split decode takes `chunk` keys per chunk.
pub(super) fn with_chunk(gpu: &Gpu, chunk: usize) -> Attention {
    Attention::new(gpu)
        .unwrap()
        .with_decode_chunk(chunk)
        .unwrap()
}
