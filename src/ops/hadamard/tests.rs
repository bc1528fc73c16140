//! GPU tests of the WHT kernels against the f64 CPU reference and the dense matrix, run on
//! every test adapter (lavapipe Vulkan and llvmpipe GL).

use super::cpu::{self, WhtEpilogueRef, WhtSize};
use super::*;
use crate::gpu::testing::{test_gpus, test_values};

/// Deterministic inputs in [-1, 1) with a row-dependent offset, so rows differ.
fn input(rows: usize, n: usize, seed: u64) -> Vec<f32> {
    test_values(rows * n, seed)
        .into_iter()
        .enumerate()
        .map(|(i, v)| v + (i / n) as f32 * 0.01)
        .collect()
}

fn reference(x: &[f32], size: WhtSize) -> Vec<f64> {
    cpu::fused_reference(x, size, WhtEpilogueRef::default())
}

/// Max abs error of `got` against `want`.
fn max_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max)
}

/// The error bound for a transform of `x`: set by the error of the same algorithm in f32 on
/// the CPU against f64 (the GPU may order its adds differently, hence the factor), plus
/// a floor of a few ulps of the largest output for sizes where the f32 CPU is exact.
fn tolerance(x: &[f32], size: WhtSize, want: &[f64]) -> f64 {
    let mut f32_cpu = x.to_vec();
    for row in f32_cpu.chunks_exact_mut(size.n) {
        cpu::fwht(row, size);
    }
    let cpu_err = max_err(&f32_cpu, want);
    let peak = want.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
    4.0 * cpu_err + 4.0 * f32::EPSILON as f64 * peak
}

/// An input of 64 zeros and an output of 64 values: two rows of 32, or four of 16.
fn x_and_y(gpu: &Gpu) -> (GpuBuffer, GpuBuffer) {
    let x = gpu.upload(MemoryCategory::Activations, "x", &[0f32; 64]);
    let y = gpu.storage(MemoryCategory::Activations, "y", 64 * 4);
    (x.unwrap(), y.unwrap())
}

/// Asserts max |got - want| <= tol, naming `what` and the adapter.
fn assert_close(gpu: &Gpu, got: &[f32], want: &[f64], tol: f64, what: &str) {
    let err = max_err(got, want);
    assert!(
        err <= tol,
        "{what} on {}: max error {err:e} > tolerance {tol:e}",
        gpu.describe()
    );
}

fn check(gpu: &Gpu, got: &[f32], x: &[f32], size: WhtSize, rows: usize, what: &str) {
    let want = reference(x, size);
    let tol = tolerance(x, size, &want);
    let what = format!("{what} n={} rows={rows}", size.n);
    assert_close(gpu, got, &want, tol, &what);
}

fn naive(h: &Hadamard, gpu: &Gpu, x: &[f32], n: usize) -> Vec<f32> {
    let rows = x.len() / n;
    let input = gpu.upload(MemoryCategory::Activations, "x", x).unwrap();
    let output = gpu
        .storage(MemoryCategory::Activations, "y", (x.len() * 4) as u64)
        .unwrap();
    let mut enc = gpu.encoder("naive test");
    h.encode_naive(&mut enc, &input, &output, rows, n).unwrap();
    gpu.submit_and_wait(enc).unwrap();
    gpu.read(&output, x.len()).unwrap()
}

/// Every size class: small and large powers of two (one and two passes), the 12/20/28
/// multiples (one and two passes), with row counts that divide nothing (131: a batch that
/// `Auto` runs on the per-row kernel on SwiftShader).
const SIZES: [(usize, &[usize]); 17] = [
    (2, &[1, 3, 37]),
    (4, &[37]),
    (8, &[5]),
    (64, &[3]),
    (256, &[37, 131]),
    (1024, &[1, 37]),
    (4096, &[1, 3]),
    (8192, &[3]),
    (16384, &[1]),
    (32768, &[1, 3]),
    (12, &[37]),
    (24, &[5]),
    (768, &[1, 3, 37]),
    (2560, &[3]),
    (3584, &[3]),
    (6144, &[2]),
    (28672, &[1]),
];

/// Where `Auto` takes the per-row kernel: what the kernel suite measured (the constants'
/// docs), not the adapter's features.
#[test]
fn auto_takes_the_per_row_kernel_where_it_measured_faster() {
    let (lavapipe, swiftshader, gpu) = ((true, false), (true, true), (false, false));
    let size = |n| WhtSize::new(n).unwrap();
    for (adapter, rows, n, want) in [
        (lavapipe, 1, 256, true),
        (lavapipe, 16, 4096, true),
        (lavapipe, 17, 256, false),
        (lavapipe, 4096, 256, false),
        (swiftshader, 16, 256, true),
        (swiftshader, 64, 256, false),
        (swiftshader, 128, 256, true),
        (swiftshader, 4096, 1024, true),
        (swiftshader, 4096, 576, false),
        (swiftshader, 1, 8192, false),
        (lavapipe, 1, 576, false),
        (gpu, 1, 256, false),
        (gpu, 4096, 256, false),
    ] {
        assert_eq!(
            auto_takes_rows(adapter, rows, size(n)),
            want,
            "{adapter:?} rows={rows} n={n}"
        );
    }
}

#[test]
fn fast_and_naive_match_f64_reference_for_every_size_class() {
    for gpu in test_gpus() {
        let h = Hadamard::new(&gpu).unwrap();
        for &(n, rows_list) in &SIZES {
            let size = WhtSize::new(n).unwrap();
            for &rows in rows_list {
                let x = input(rows, n, (n * 31 + rows) as u64);
                let fast = h.run(&x, n, WhtPath::Shared).unwrap();
                check(&gpu, &fast, &x, size, rows, "fast");
                match h.run(&x, n, WhtPath::Rows) {
                    Ok(by_rows) => check(&gpu, &by_rows, &x, size, rows, "rows"),
                    Err(e) => assert!(
                        n > 4096 && matches!(e, WhtError::RowTooLong { .. }),
                        "rows n={n}: {e}"
                    ),
                }
                let slow = naive(&h, &gpu, &x, n);
                check(&gpu, &slow, &x, size, rows, "naive");
            }
        }
    }
}

/// The fast transform of `rows` rows of `x` with `epilogue` on `path`, read back.
fn run_fused(
    gpu: &Gpu,
    h: &Hadamard,
    x: &GpuBuffer,
    rows: usize,
    n: usize,
    epilogue: WhtEpilogue<'_>,
    path: WhtPath,
) -> Vec<f32> {
    let out = gpu
        .storage(MemoryCategory::Activations, "out", (rows * n * 4) as u64)
        .unwrap();
    let mut enc = gpu.encoder("fused test");
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        let options = WhtOptions { epilogue, path };
        h.encode(&mut pass, x, &out, rows, n, options).unwrap();
    }
    gpu.submit_and_wait(enc).unwrap();
    gpu.read(&out, rows * n).unwrap()
}

/// The sizes of core order m that change a kernel's shape: m x 1, m x 2, the largest
/// single pass (n <= 4096) and the largest.
fn core_sizes(m: usize) -> Vec<usize> {
    let top = |limit: usize| m << (limit / m).ilog2();
    let mut v = vec![m, 2 * m, top(TILE_ELEMS), top(cpu::MAX_N)];
    v.dedup();
    v
}

/// Every core order (12, 20, ..., 180) at the sizes that break kernels, on every path (the
/// tiled kernel with workgroup memory and with subgroup shuffles, by rows, naive, and the
/// decoder's fused epilogue), against the f64 CPU reference; 37 rows (a partial last tile)
/// at m x 1.
#[test]
fn every_core_order_on_every_path_matches_f64_reference() {
    for gpu in test_gpus() {
        let h = Hadamard::new(&gpu).unwrap();
        let mut paths = vec![WhtPath::Shared, WhtPath::Rows];
        if gpu.features().subgroup {
            paths.push(WhtPath::Subgroup);
        }
        for m in super::construct::CORE_ORDERS {
            for n in core_sizes(m) {
                let size = WhtSize::new(n).unwrap();
                assert_eq!(size.m, m);
                let rows = if n == m { 37 } else { 2 };
                let x = input(rows, n, (n + m) as u64);
                for &path in &paths {
                    if path == WhtPath::Rows && n > TILE_ELEMS {
                        continue;
                    }
                    let got = h.run(&x, n, path).unwrap();
                    check(&gpu, &got, &x, size, rows, &format!("{path:?}"));
                }
                check(&gpu, &naive(&h, &gpu, &x, n), &x, size, rows, "naive");
            }
            // The epilogue the decoder fuses, at m x 2 on the path Auto picks.
            let n = 2 * m;
            let size = WhtSize::new(n).unwrap();
            let rows = 3;
            let (x, resid) = (input(rows, n, 8), input(rows, n, 9));
            let gamma: Vec<f32> = input(1, n, 10).iter().map(|v| 1.0 + 0.5 * v).collect();
            let beta = input(1, n, 11);
            let up = |v: &[f32]| gpu.upload(MemoryCategory::Activations, "t", v).unwrap();
            let (xb, rb, gb, bb) = (up(&x), up(&resid), up(&gamma), up(&beta));
            let epilogue = WhtEpilogue {
                gamma: Some(&gb),
                beta: Some(&bb),
                resid: Some(&rb),
            };
            let got = run_fused(&gpu, &h, &xb, rows, n, epilogue, WhtPath::Auto);
            let epi = WhtEpilogueRef {
                gamma: Some(&gamma),
                beta: Some(&beta),
                resid: Some(&resid),
            };
            let want = cpu::fused_reference(&x, size, epi);
            let tol = 1.5 * tolerance(&x, size, &reference(&x, size)) + 12.0 * f32::EPSILON as f64;
            assert_close(&gpu, &got, &want, tol, &format!("fused n={n}"));
        }
    }
}

#[test]
fn fast_matches_dense_hadamard_matrix() {
    for gpu in test_gpus() {
        let h = Hadamard::new(&gpu).unwrap();
        for n in [2, 16, 12, 20, 28, 128, 40, 768, 36, 120, 180] {
            let size = WhtSize::new(n).unwrap();
            let rows = 3;
            let x = input(rows, n, n as u64);
            let got = h.run(&x, n, WhtPath::Auto).unwrap();
            let dense = cpu::dense_matrix(size);
            let want: Vec<f64> = x
                .chunks_exact(n)
                .flat_map(|row| {
                    (0..n)
                        .map(|r| {
                            (0..n)
                                .map(|c| dense[r * n + c] * row[c] as f64)
                                .sum::<f64>()
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            let tol = tolerance(&x, size, &want);
            assert_close(&gpu, &got, &want, tol, &format!("dense n={n}"));
        }
    }
}

#[test]
fn transform_is_involutive_norm_preserving_and_linear() {
    for gpu in test_gpus() {
        let h = Hadamard::new(&gpu).unwrap();
        // 704 = 44 x 16: Paley I made symmetric, so the transform is its own inverse too.
        for n in [1024, 768, 8192, 704, 2880] {
            let rows = 3;
            let x = input(rows, n, 7);
            let y = h.run(&x, n, WhtPath::Auto).unwrap();
            let back = h.run(&y, n, WhtPath::Auto).unwrap();
            // H(H(x)) = x: two transforms, each within a few ulps per log2(n) stages.
            let tol = 8.0 * (n as f64).log2() * f32::EPSILON as f64;
            let err = back
                .iter()
                .zip(&x)
                .map(|(a, b)| (a - b).abs() as f64)
                .fold(0.0, f64::max);
            assert!(
                err <= tol,
                "H(H(x)) n={n} on {}: {err:e} > {tol:e}",
                gpu.describe()
            );
            for (rx, ry) in x.chunks_exact(n).zip(y.chunks_exact(n)) {
                let nx: f64 = rx.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
                let ny: f64 = ry.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
                assert!((nx - ny).abs() <= 1e-5 * nx, "norm n={n}: {nx} vs {ny}");
            }
            // Linearity: H(2x + z) = 2 H(x) + H(z).
            let z = input(rows, n, 99);
            let hz = h.run(&z, n, WhtPath::Auto).unwrap();
            let comb: Vec<f32> = x.iter().zip(&z).map(|(a, b)| 2.0 * a + b).collect();
            let hcomb = h.run(&comb, n, WhtPath::Auto).unwrap();
            for ((a, b), c) in hcomb.iter().zip(&y).zip(&hz) {
                assert!(
                    (a - (2.0 * b + c)).abs() <= 1e-5,
                    "linearity n={n}: {a} vs {}",
                    2.0 * b + c
                );
            }
        }
    }
}

#[test]
fn fused_epilogue_matches_cpu_formula() {
    for gpu in test_gpus() {
        let h = Hadamard::new(&gpu).unwrap();
        // 256 x 37 takes the tiled kernel everywhere; 768 x 3 and 8192 x 2 the by-rows
        // kernel on CPU adapters (Auto) and the tiled one elsewhere; Rows forces it.
        let cases = [
            (256, 37, WhtPath::Auto),
            (768, 3, WhtPath::Auto),
            (8192, 2, WhtPath::Auto),
            (20, 5, WhtPath::Rows),
            (256, 37, WhtPath::Rows),
        ];
        for (n, rows, path) in cases {
            let size = WhtSize::new(n).unwrap();
            let x = input(rows, n, 1);
            let gamma: Vec<f32> = input(1, n, 2).iter().map(|v| 1.0 + 0.5 * v).collect();
            let beta = input(1, n, 3);
            let resid = input(rows, n, 4);
            let xb = gpu.upload(MemoryCategory::Activations, "x", &x).unwrap();
            let gb = gpu
                .upload(MemoryCategory::Weights, "gamma", &gamma)
                .unwrap();
            let bb = gpu.upload(MemoryCategory::Weights, "beta", &beta).unwrap();
            let rb = gpu
                .upload(MemoryCategory::Activations, "resid", &resid)
                .unwrap();
            // Each optional part alone, then all together.
            let cases: [(Option<&GpuBuffer>, Option<&GpuBuffer>, Option<&GpuBuffer>); 4] = [
                (Some(&gb), None, None),
                (None, Some(&bb), None),
                (None, None, Some(&rb)),
                (Some(&gb), Some(&bb), Some(&rb)),
            ];
            for (g, b, r) in cases {
                let epi = WhtEpilogue {
                    gamma: g,
                    beta: b,
                    resid: r,
                };
                let got = run_fused(&gpu, &h, &xb, rows, n, epi, path);
                let epi = WhtEpilogueRef {
                    gamma: g.map(|_| &gamma[..]),
                    beta: b.map(|_| &beta[..]),
                    resid: r.map(|_| &resid[..]),
                };
                let want = cpu::fused_reference(&x, size, epi);
                // The transform's error times |gamma| <= 1.5, plus rounding of the adds.
                let tol = 1.5 * tolerance(&x, size, &reference(&x, size))
                    + 4.0 * f32::EPSILON as f64 * 3.0;
                assert_close(
                    &gpu,
                    &got,
                    &want,
                    tol,
                    &format!(
                        "fused n={n} {path:?} {:?}",
                        (g.is_some(), b.is_some(), r.is_some())
                    ),
                );
            }
        }
    }
}

#[test]
fn subgroup_path_equals_shared_path_bit_for_bit() {
    let gpus: Vec<Gpu> = test_gpus()
        .into_iter()
        .filter(|g| g.features().subgroup)
        .collect();
    if gpus.is_empty() && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI: no test adapter offers SUBGROUP (lavapipe does): the subgroup path went untested"
        );
    }
    for gpu in gpus {
        let h = Hadamard::new(&gpu).unwrap();
        for (n, rows) in [
            (2, 37),
            (64, 5),
            (256, 3),
            (1024, 37),
            (4096, 3),
            (768, 3),
            (3584, 2),
            (32768, 1),
        ] {
            let size = WhtSize::new(n).unwrap();
            let x = input(rows, n, 5);
            let shared = h.run(&x, n, WhtPath::Shared).unwrap();
            let sub = h.run(&x, n, WhtPath::Subgroup).unwrap();
            check(&gpu, &shared, &x, size, rows, "shared path");
            check(&gpu, &sub, &x, size, rows, "subgroup path");
            // Both paths apply the stages in the same bit order (the top window, then
            // bit 0 upwards) and every butterfly computes the same a + b, a - b: the
            // results are identical to the bit.
            assert_eq!(
                shared,
                sub,
                "subgroup vs shared n={n} on {}",
                gpu.describe()
            );
        }
    }
}

#[test]
fn bad_sizes_and_buffers_are_errors() {
    let Some(gpu) = test_gpus().into_iter().next() else {
        return;
    };
    let h = Hadamard::new(&gpu).unwrap();
    for (n, why) in [
        (1, "from 2"),
        (3, "multiple of 4"),
        (92, "order 92"),
        (65536, "from 2"),
    ] {
        let err = h.run(&vec![0.0; n], n, WhtPath::Auto).unwrap_err();
        assert!(
            err.to_string().contains(why) && err.to_string().contains("nearest supported"),
            "{err}"
        );
    }
    let err = h.run(&[0.0; 10], 4, WhtPath::Auto).unwrap_err();
    assert!(matches!(err, WhtError::Shape { .. }), "{err}");
    let (x, y) = x_and_y(&gpu);
    let g = gpu
        .upload(MemoryCategory::Weights, "gamma", &[1f32; 16])
        .unwrap();
    let mut enc = gpu.encoder("bad");
    let mut pass = enc.begin_compute_pass(&Default::default());
    let epi = WhtEpilogue {
        gamma: Some(&g),
        ..Default::default()
    };
    let err = h
        .encode(
            &mut pass,
            &x,
            &y,
            2,
            32,
            WhtOptions {
                epilogue: epi,
                path: WhtPath::Auto,
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("gamma"), "{err}");
    let err = h
        .encode(&mut pass, &x, &y, 3, 32, WhtOptions::on(WhtPath::Auto))
        .unwrap_err();
    assert!(err.to_string().contains("input"), "{err}");
}

#[test]
fn plans_respect_workgroup_and_tile_limits() {
    let sizes = cpu::supported_sizes(2..=cpu::MAX_N);
    for (n, rows) in sizes
        .into_iter()
        .flat_map(|n| [1, 2, 3, 37].map(|r| (n, r)))
    {
        let size = WhtSize::new(n).unwrap();
        let passes = plan(size, rows);
        assert!(!passes.is_empty() && passes.len() <= 2);
        let mut stages_done = 1usize;
        for fp in &passes {
            assert!(
                fp.workgroup() <= MAX_WORKGROUP && fp.workgroup() >= 1,
                "n={n} {fp:?}"
            );
            assert!(
                fp.lb * fp.transform_len() * fp.ls <= TILE_ELEMS,
                "n={n} {fp:?}"
            );
            assert!(
                fp.v <= fp.p && fp.v <= MAX_VALUES_PER_INVOCATION && fp.s % fp.ls == 0,
                "n={n} {fp:?}"
            );
            // The exchange rounds advance LOG_V stages each: V = 1 only when P = 1.
            assert!(fp.v >= 2 || fp.p == 1, "n={n} {fp:?}");
            stages_done *= fp.transform_len();
        }
        assert_eq!(stages_done, n, "passes must factor n={n}");
        if rows == 1 && (512..=TILE_ELEMS).contains(&n) {
            // One decode row keeps most of its workgroup busy.
            let w = passes[0].workgroup();
            assert!(w > MAX_WORKGROUP / 2, "n={n}: one row on {w} invocations");
        }
        assert!(passes.last().unwrap().last);
    }
}

#[test]
fn aliased_output_is_refused_before_anything_is_recorded() {
    for gpu in test_gpus() {
        let h = Hadamard::new(&gpu).unwrap();
        let (x, y) = x_and_y(&gpu);
        let with = |epilogue| WhtOptions {
            epilogue,
            path: WhtPath::Auto,
        };
        let aliased = |r: Result<(), WhtError>| match r {
            Err(WhtError::Aliased { what }) => what,
            other => panic!("expected WhtError::Aliased, got {other:?}"),
        };
        let mut enc = gpu.encoder("aliased");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            let r = h.encode(&mut pass, &x, &x, 2, 32, WhtOptions::default());
            assert_eq!(aliased(r), "input");
            for what in ["resid", "gamma", "beta"] {
                // The epilogue with `y`, the output, in the slot `what` only.
                let mut epi = WhtEpilogue::default();
                *match what {
                    "resid" => &mut epi.resid,
                    "gamma" => &mut epi.gamma,
                    _ => &mut epi.beta,
                } = Some(&y);
                assert_eq!(aliased(h.encode(&mut pass, &x, &y, 2, 32, with(epi))), what);
            }
            // Reading one buffer in several read-only slots is fine.
            let epi = WhtEpilogue {
                resid: Some(&x),
                gamma: Some(&x),
                beta: Some(&x),
            };
            h.encode(&mut pass, &x, &y, 2, 32, with(epi)).unwrap();
        }
        let r = h.encode_naive(&mut enc, &y, &y, 2, 32);
        assert_eq!(aliased(r), "input");
        // The refused calls recorded nothing: the encoder submits without a validation error.
        gpu.submit_and_wait(enc).unwrap();
    }
}
