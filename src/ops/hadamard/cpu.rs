//! The Walsh–Hadamard transform on the CPU: size rules, the small Hadamard matrices, the
//! scalar FWHT and the dense matrix. The GPU kernels, the trainer and the tests all take
//! their definition of H from here.

use thiserror::Error;

/// Largest supported transform length.
pub const MAX_N: usize = 32768;

/// Orders of the non-power-of-two Hadamard factors walsh supports.
pub const SMALL_ORDERS: [usize; 3] = [12, 20, 28];

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "unsupported Walsh–Hadamard size {n}: supported sizes are powers of two from 2 to 32768, \
     and 12, 20 or 28 times a power of two up to 32768 (e.g. 768, 1536, 2560, 3584)"
)]
pub struct UnsupportedSize {
    pub n: usize,
}

/// A supported length n = m * p, with m in {1, 12, 20, 28} and p a power of two.
///
/// H_n = H_m (x) H_p (Kronecker product): index i = c * p + j (chunk c, position j) and
/// H_n[c p + j][c' p + j'] = H_m[c][c'] * H_p[j][j'].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WhtSize {
    pub n: usize,
    pub m: usize,
    pub p: usize,
}

impl WhtSize {
    pub fn new(n: usize) -> Result<Self, UnsupportedSize> {
        if !(2..=MAX_N).contains(&n) {
            return Err(UnsupportedSize { n });
        }
        for m in [1, 12, 20, 28] {
            if n.is_multiple_of(m) && (n / m).is_power_of_two() {
                return Ok(Self { n, m, p: n / m });
            }
        }
        Err(UnsupportedSize { n })
    }

    pub fn log2_p(&self) -> u32 {
        self.p.trailing_zeros()
    }
}

/// The symmetric m x m Hadamard matrix walsh uses for m in {12, 20, 28} (and [1] for m = 1),
/// entries +1 / -1, row major.
///
/// Paley's second construction from a prime power q = 1 (mod 4), with m = 2 (q + 1):
/// q = 5 gives 12, q = 9 gives 20, q = 13 gives 28. The result is symmetric, so the
/// normalized transform is its own inverse for every supported size.
pub fn small_hadamard(m: usize) -> Vec<i8> {
    let q = match m {
        1 => return vec![1],
        12 => 5,
        20 => 9,
        28 => 13,
        _ => panic!("small_hadamard: order {m} is not one of 1, 12, 20, 28"),
    };
    let field = Field::new(q);
    // Symmetric conference matrix C of order q + 1: C[0][0] = 0, C[0][k] = C[k][0] = 1,
    // C[1 + a][1 + b] = chi(a - b) over GF(q).
    let o = q + 1;
    let mut c = vec![0i8; o * o];
    for k in 1..o {
        c[k] = 1;
        c[k * o] = 1;
    }
    for a in 0..q {
        for b in 0..q {
            c[(1 + a) * o + 1 + b] = field.chi(field.sub(a, b));
        }
    }
    // Replace 0 by [[1, -1], [-1, -1]] and +-1 by +-[[1, 1], [1, -1]].
    let mut h = vec![0i8; m * m];
    for r in 0..o {
        for s in 0..o {
            let block: [[i8; 2]; 2] = match c[r * o + s] {
                0 => [[1, -1], [-1, -1]],
                v => [[v, v], [v, -v]],
            };
            for (dr, row) in block.iter().enumerate() {
                for (ds, &x) in row.iter().enumerate() {
                    h[(2 * r + dr) * m + 2 * s + ds] = x;
                }
            }
        }
    }
    h
}

/// Row c of H_m as a bit mask: bit c' set means H_m[c][c'] = -1. This is how the shader
/// receives the matrix (m <= 32 bits fit one u32).
pub fn sign_masks(m: usize) -> Vec<u32> {
    let h = small_hadamard(m);
    (0..m)
        .map(|r| (0..m).fold(0u32, |acc, c| acc | (((h[r * m + c] < 0) as u32) << c)))
        .collect()
}

/// GF(q) for q = 5, 9 or 13: integers mod q, or GF(3)[x] / (x^2 + 1) for q = 9.
/// Elements are numbered 0..q; for q = 9, element a + 3 b stands for a + b x.
struct Field {
    q: usize,
    squares: Vec<bool>,
}

impl Field {
    fn new(q: usize) -> Self {
        let mut f = Self {
            q,
            squares: vec![false; q],
        };
        for a in 1..q {
            let s = f.mul(a, a);
            f.squares[s] = true;
        }
        f
    }

    fn mul(&self, a: usize, b: usize) -> usize {
        if self.q == 9 {
            let (a0, a1, b0, b1) = (a % 3, a / 3, b % 3, b / 3);
            // (a0 + a1 x)(b0 + b1 x) with x^2 = -1
            let r0 = (a0 * b0 + 2 * a1 * b1) % 3;
            let r1 = (a0 * b1 + a1 * b0) % 3;
            r0 + 3 * r1
        } else {
            a * b % self.q
        }
    }

    fn sub(&self, a: usize, b: usize) -> usize {
        if self.q == 9 {
            let r0 = (a % 3 + 3 - b % 3) % 3;
            let r1 = (a / 3 + 3 - b / 3) % 3;
            r0 + 3 * r1
        } else {
            (a + self.q - b) % self.q
        }
    }

    /// Quadratic character: 0 for 0, 1 for a nonzero square, -1 otherwise.
    fn chi(&self, a: usize) -> i8 {
        if a == 0 {
            0
        } else if self.squares[a] {
            1
        } else {
            -1
        }
    }
}

/// Numbers the CPU transform works in.
pub trait Real:
    Copy
    + Default
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
{
    fn from_f64(v: f64) -> Self;
}

impl Real for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// Normalized WHT of one row in place: `x <- H_n x / sqrt(n)`. Scalar butterflies over the
/// power-of-two part, then the m x m mix across chunks; the scale is applied at the end,
/// as the GPU kernel does.
pub fn fwht<T: Real>(x: &mut [T], size: WhtSize) {
    assert_eq!(
        x.len(),
        size.n,
        "fwht: row length must equal the transform size"
    );
    let (m, p) = (size.m, size.p);
    for chunk in x.chunks_exact_mut(p) {
        let mut h = 1;
        while h < p {
            for block in chunk.chunks_exact_mut(2 * h) {
                let (lo, hi) = block.split_at_mut(h);
                for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                    let (u, v) = (*a, *b);
                    *a = u + v;
                    *b = u - v;
                }
            }
            h *= 2;
        }
    }
    if m > 1 {
        let hm = small_hadamard(m);
        let mut col = vec![T::default(); m];
        for j in 0..p {
            for (c, v) in col.iter_mut().enumerate() {
                *v = x[c * p + j];
            }
            for r in 0..m {
                let mut acc = T::default();
                for (c, &v) in col.iter().enumerate() {
                    acc = if hm[r * m + c] > 0 { acc + v } else { acc - v };
                }
                x[r * p + j] = acc;
            }
        }
    }
    let scale = T::from_f64(1.0 / (size.n as f64).sqrt());
    for v in x.iter_mut() {
        *v = *v * scale;
    }
}

/// The dense normalized matrix H_n / sqrt(n), row major (n * n entries).
pub fn dense_matrix(size: WhtSize) -> Vec<f64> {
    let hm = small_hadamard(size.m);
    let (n, p) = (size.n, size.p);
    let scale = 1.0 / (n as f64).sqrt();
    let mut h = vec![0.0; n * n];
    for r in 0..n {
        for c in 0..n {
            let sylvester = if ((r % p) & (c % p)).count_ones() % 2 == 0 {
                1.0
            } else {
                -1.0
            };
            h[r * n + c] = scale * sylvester * hm[(r / p) * size.m + c / p] as f64;
        }
    }
    h
}

/// The optional parts of `out = resid + gamma * H(x) / sqrt(n) + beta`.
#[derive(Clone, Copy, Debug, Default)]
pub struct EpilogueRef<'a> {
    pub gamma: Option<&'a [f32]>,
    pub beta: Option<&'a [f32]>,
    pub resid: Option<&'a [f32]>,
}

/// CPU reference of the fused kernel over `rows` rows of `x` (row major), in f64.
pub fn fused_reference(x: &[f32], size: WhtSize, epi: EpilogueRef<'_>) -> Vec<f64> {
    let n = size.n;
    let mut out = Vec::with_capacity(x.len());
    for (r, row) in x.chunks_exact(n).enumerate() {
        let mut y: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        fwht(&mut y, size);
        for (i, v) in y.iter_mut().enumerate() {
            if let Some(g) = epi.gamma {
                *v *= g[i] as f64;
            }
            if let Some(b) = epi.beta {
                *v += b[i] as f64;
            }
            if let Some(res) = epi.resid {
                *v += res[r * n + i] as f64;
            }
        }
        out.extend(y);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_small_sizes() -> Vec<usize> {
        let mut v: Vec<usize> = (1..=10).map(|k| 1 << k).collect();
        v.extend([12, 24, 20, 40, 28, 56, 96]);
        v
    }

    #[test]
    fn sizes_accepted_and_rejected() {
        for n in [
            2, 4, 1024, 4096, 8192, 32768, 12, 768, 1536, 2560, 3584, 28672,
        ] {
            let s = WhtSize::new(n).unwrap();
            assert_eq!(s.m * s.p, n);
        }
        for n in [0, 1, 3, 6, 100, 36, 65536, 40000, 44] {
            let e = WhtSize::new(n).unwrap_err();
            assert!(e.to_string().contains("768, 1536"), "{e}");
        }
        assert_eq!(
            WhtSize::new(768).unwrap(),
            WhtSize {
                n: 768,
                m: 12,
                p: 64
            }
        );
    }

    #[test]
    fn small_matrices_are_symmetric_hadamard() {
        for m in SMALL_ORDERS {
            let h = small_hadamard(m);
            for r in 0..m {
                for c in 0..m {
                    assert_eq!(h[r * m + c], h[c * m + r], "H_{m} symmetric at {r},{c}");
                    let dot: i32 = (0..m).map(|k| (h[r * m + k] * h[c * m + k]) as i32).sum();
                    assert_eq!(dot, if r == c { m as i32 } else { 0 }, "H_{m} orthogonal");
                }
            }
            let masks = sign_masks(m);
            assert_eq!(masks.len(), m);
            assert_eq!(
                masks[0].count_ones() as usize,
                (0..m).filter(|&c| h[c] < 0).count()
            );
        }
    }

    #[test]
    fn fwht_matches_dense_matrix() {
        for n in all_small_sizes() {
            let size = WhtSize::new(n).unwrap();
            let h = dense_matrix(size);
            let x: Vec<f64> = (0..n).map(|i| ((i * 37 + 11) % 17) as f64 - 8.0).collect();
            let mut y = x.clone();
            fwht(&mut y, size);
            for r in 0..n {
                let d: f64 = (0..n).map(|c| h[r * n + c] * x[c]).sum();
                assert!((d - y[r]).abs() < 1e-9, "n={n} row {r}: {d} vs {}", y[r]);
            }
        }
    }

    #[test]
    fn dense_matrix_is_orthogonal_and_involutive() {
        for n in [8, 12, 20, 56] {
            let size = WhtSize::new(n).unwrap();
            let h = dense_matrix(size);
            for r in 0..n {
                for c in 0..n {
                    let hh: f64 = (0..n).map(|k| h[r * n + k] * h[k * n + c]).sum();
                    let want = if r == c { 1.0 } else { 0.0 };
                    assert!((hh - want).abs() < 1e-12, "n={n} (H H)[{r}][{c}] = {hh}");
                }
            }
        }
    }
}
