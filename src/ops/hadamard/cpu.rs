//! The Walsh–Hadamard transform on the CPU: size rules, the small Hadamard matrices, the
//! scalar FWHT and the dense matrix. The GPU kernels, the trainer and the tests all take
//! their definition of H from here.

use std::sync::OnceLock;

use thiserror::Error;

/// Largest supported transform length.
pub const MAX_N: usize = 32768;

use super::construct::{CORE_ORDERS, MISSING_ORDERS, construction};

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "unsupported Walsh–Hadamard size {n}: {reason}. Supported: n = m * 2^k up to 32768 with \
     m = 1 or one of {cores} (e.g. 576, 768, 960, 1536, 2304); nearest supported: {near}"
)]
pub struct UnsupportedSize {
    pub n: usize,
    /// Why this n has no transform.
    pub reason: String,
    /// The nearest supported sizes below and above, as text.
    pub near: String,
    cores: String,
}

impl UnsupportedSize {
    fn new(n: usize) -> Self {
        let odd = if n == 0 { 0 } else { n >> n.trailing_zeros() };
        let reason = if !(2..=MAX_N).contains(&n) {
            format!("lengths run from 2 to {MAX_N}")
        } else if !n.is_multiple_of(4) {
            "a Hadamard matrix has order 1, 2 or a multiple of 4".to_string()
        } else if let Some(m) = MISSING_ORDERS
            .iter()
            .copied()
            .find(|&m| n.is_multiple_of(m) && (n / m).is_power_of_two())
        {
            format!(
                "it needs a Hadamard matrix of order {m} = {odd} x {}, which Paley's \
                 constructions and doubling do not give (orders 92, 116, 156 and 172 need \
                 others, not implemented)",
                m / odd
            )
        } else {
            format!(
                "its odd part {odd} needs a Hadamard matrix of order {odd} x 4 or more, \
                 beyond the largest order built ({})",
                super::construct::MAX_CORE
            )
        };
        let below = (2..n.min(MAX_N + 1))
            .rev()
            .find(|&k| core_order(k).is_some());
        let above = (n.max(2)..=MAX_N).find(|&k| core_order(k).is_some());
        let near = match (below, above) {
            (Some(b), Some(a)) => format!("{b} and {a}"),
            (Some(x), None) | (None, Some(x)) => x.to_string(),
            (None, None) => "none".to_string(),
        };
        let cores = CORE_ORDERS.map(|m| m.to_string()).join(", ");
        Self {
            n,
            reason,
            near,
            cores,
        }
    }
}

/// A supported length n = m * p: p a power of two and m = 1 or the smallest core order
/// ([`CORE_ORDERS`]: 12, 20, 28, 36, ..., 180) with n / m a power of two.
///
/// H_n = H_m (x) H_p (Kronecker product): index i = c * p + j (chunk c, position j) and
/// `H_n[c p + j][c' p + j'] = H_m[c][c'] * H_p[j][j']`. Every factor is symmetric, so H_n
/// is too: the normalized transform is orthogonal and its own inverse at every size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WhtSize {
    pub n: usize,
    pub m: usize,
    pub p: usize,
}

impl WhtSize {
    /// The factors of `n`, or why it has no transform (with the nearest sizes that do).
    ///
    /// ```
    /// use walsh::ops::hadamard::WhtSize;
    ///
    /// let size = WhtSize::new(576)?; // 36 x 16: a Paley matrix of order 36 times H_16
    /// assert_eq!((size.m, size.p), (36, 16));
    /// assert!(WhtSize::new(100 * 16).is_ok()); // 1600 = 100 x 16
    /// assert!(WhtSize::new(92 * 16).is_err()); // order 92 is not built
    /// # Ok::<(), walsh::ops::hadamard::UnsupportedSize>(())
    /// ```
    pub fn new(n: usize) -> Result<Self, UnsupportedSize> {
        let m = core_order(n).ok_or_else(|| UnsupportedSize::new(n))?;
        Ok(Self { n, m, p: n / m })
    }

    pub fn log2_p(&self) -> u32 {
        self.p.trailing_zeros()
    }
}

/// The m of a supported length n, if n is one.
fn core_order(n: usize) -> Option<usize> {
    if !(2..=MAX_N).contains(&n) {
        return None;
    }
    std::iter::once(1)
        .chain(CORE_ORDERS)
        .find(|&m| n.is_multiple_of(m) && (n / m).is_power_of_two())
}

/// Every supported length in `range`, ascending.
pub fn supported_sizes(range: std::ops::RangeInclusive<usize>) -> Vec<usize> {
    range.filter(|&n| core_order(n).is_some()).collect()
}

/// The symmetric m x m Hadamard matrix of core order m (a [`WhtSize::m`]: 1 or one of
/// [`CORE_ORDERS`]), entries +1 / -1, row major. Built by `construct` (Paley II where it
/// applies, else Paley I made symmetric).
///
/// Built once per order and kept: the CPU decoder transforms every row of every layer.
pub fn small_hadamard(m: usize) -> &'static [i8] {
    static BUILT: [OnceLock<Vec<i8>>; CORE_ORDERS.len()] = [const { OnceLock::new() }; _];
    if m == 1 {
        return &[1];
    }
    let k = CORE_ORDERS
        .iter()
        .position(|&c| c == m)
        .unwrap_or_else(|| panic!("small_hadamard: {m} is not a core order (take m from WhtSize)"));
    BUILT[k].get_or_init(|| {
        construction(m)
            .expect("every core order has a construction (tested)")
            .matrix()
    })
}

/// 32-bit words per row of [`sign_masks`] for order m.
pub fn sign_words(m: usize) -> usize {
    m.div_ceil(32)
}

/// u32 words of [`sign_uniform`]: the sign masks of the largest core order, 180 rows of
/// 6 words (`array<vec4<u32>, 270>` in attention.wgsl and matmul.wgsl).
pub const SIGN_UNIFORM_WORDS: usize = 1080;

/// [`sign_masks`] of m padded with zeros to a whole uniform array of
/// [`SIGN_UNIFORM_WORDS`] (zeros only for m = 1): how the attention kernels' rotation and
/// the GEMVs' Hadamard prologue receive H_m.
pub fn sign_uniform(m: usize) -> [u32; SIGN_UNIFORM_WORDS] {
    let mut words = [0u32; SIGN_UNIFORM_WORDS];
    if m > 1 {
        let masks = sign_masks(m);
        words[..masks.len()].copy_from_slice(&masks);
    }
    words
}

/// H_m as bit masks, [`sign_words`] words per row: bit c' % 32 of word c' / 32 of row c
/// set means `H_m[c][c'] = -1`. This is how the shaders receive the matrix.
pub fn sign_masks(m: usize) -> Vec<u32> {
    let h = small_hadamard(m);
    let w = sign_words(m);
    let mut masks = vec![0u32; m * w];
    for r in 0..m {
        for c in 0..m {
            if h[r * m + c] < 0 {
                masks[r * w + c / 32] |= 1 << (c % 32);
            }
        }
    }
    masks
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
/// as the GPU kernel does. In f64 it is the reference the GPU kernels are tested against;
/// in f32 it computes what they compute.
///
/// Panics unless `x.len() == size.n`.
///
/// ```
/// use walsh::ops::hadamard::{WhtSize, cpu};
///
/// // H_4 / 2 maps a unit vector to a column of H_4, scaled.
/// let mut x = [1.0f64, 0.0, 0.0, 0.0];
/// cpu::fwht(&mut x, WhtSize::new(4)?);
/// assert_eq!(x, [0.5, 0.5, 0.5, 0.5]);
///
/// // Orthogonal and symmetric, so its own inverse, at every size (here 12 = 12 x 1).
/// let size = WhtSize::new(12)?;
/// let v: Vec<f64> = (0..12).map(|i| i as f64 - 5.5).collect();
/// let mut y = v.clone();
/// cpu::fwht(&mut y, size);
/// cpu::fwht(&mut y, size);
/// assert!(y.iter().zip(&v).all(|(a, b)| (a - b).abs() < 1e-12));
/// # Ok::<(), walsh::ops::hadamard::UnsupportedSize>(())
/// ```
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

/// The optional parts of `out = resid + gamma * H(x) / sqrt(n) + beta` on the CPU: host
/// slices in place of [`super::WhtEpilogue`]'s GPU buffers, for [`fused_reference`].
#[derive(Clone, Copy, Debug, Default)]
pub struct WhtEpilogueRef<'a> {
    pub gamma: Option<&'a [f32]>,
    pub beta: Option<&'a [f32]>,
    pub resid: Option<&'a [f32]>,
}

/// CPU reference of the fused kernel over `rows` rows of `x` (row major), in f64.
pub fn fused_reference(x: &[f32], size: WhtSize, epi: WhtEpilogueRef<'_>) -> Vec<f64> {
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
        v.extend([24, 40, 56, 96, 72, 360]);
        // Every core order m x 1: Paley I (44, 68, 132, 140) and II over every field.
        v.extend(CORE_ORDERS);
        v
    }

    #[test]
    fn sizes_accepted_and_rejected() {
        for (n, m) in [
            (2, 1),
            (4, 1),
            (32768, 1),
            (12, 12),
            (24, 12),
            (768, 12),
            (3584, 28),
            (28672, 28),
            (576, 36),
            (960, 60),
            (1152, 36),
            (2304, 36),
            (2880, 180),
            (3840, 60),
            (5376, 84),
            (180, 180),
            (23040, 180),
        ] {
            let s = WhtSize::new(n).unwrap();
            assert_eq!((s.m, s.m * s.p), (m, n), "n = {n}");
        }
        for (n, why, near) in [
            (0, "from 2 to 32768", "2"),
            (1, "from 2 to 32768", "2"),
            (6, "order 1, 2 or a multiple of 4", "4 and 8"),
            (50, "order 1, 2 or a multiple of 4", "48 and 52"),
            (92, "order 92 = 23 x 4", "88 and 96"),
            (184, "order 92 = 23 x 4", "180 and 192"),
            (172 * 8, "order 172 = 43 x 4", "1344 and 1408"),
            (47 * 4, "odd part 47", "180 and 192"),
            (65536, "from 2 to 32768", "32768"),
            (46080, "from 2 to 32768", "32768"),
        ] {
            let e = WhtSize::new(n).unwrap_err().to_string();
            assert!(e.contains(why), "{n}: {e}");
            assert!(
                e.contains(&format!("nearest supported: {near}")),
                "{n}: {e}"
            );
            assert!(e.contains("12, 20, 28, 36"), "{e}");
        }
    }

    #[test]
    fn the_sign_uniform_holds_the_largest_order_and_is_bound_whole() {
        assert_eq!(SIGN_UNIFORM_WORDS * 4, crate::gpu::SPARE_UNIFORM_BYTES);
        let top = super::super::construct::MAX_CORE;
        assert_eq!(sign_masks(top).len(), SIGN_UNIFORM_WORDS);
        assert!(sign_uniform(1).iter().all(|&w| w == 0));
        assert_eq!(sign_uniform(36)[..72], sign_masks(36)[..]);
    }

    #[test]
    fn small_matrices_are_symmetric_hadamard() {
        for m in CORE_ORDERS {
            let h = small_hadamard(m);
            for r in 0..m {
                for c in 0..m {
                    assert_eq!(h[r * m + c], h[c * m + r], "H_{m} symmetric at {r},{c}");
                    let dot: i32 = (0..m).map(|k| (h[r * m + k] * h[c * m + k]) as i32).sum();
                    assert_eq!(dot, if r == c { m as i32 } else { 0 }, "H_{m} orthogonal");
                }
            }
            let (masks, w) = (sign_masks(m), sign_words(m));
            assert_eq!(masks.len(), m * w);
            for r in [0, m / 2, m - 1] {
                for c in 0..m {
                    let bit = (masks[r * w + c / 32] >> (c % 32)) & 1;
                    assert_eq!(bit == 1, h[r * m + c] < 0, "H_{m} mask [{r}][{c}]");
                }
            }
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
        for n in [8, 12, 20, 56, 36, 120, 180] {
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
