//! Hadamard matrices of the orders the transform mixes across chunks: Paley's two
//! constructions over finite fields GF(p^k), made symmetric, for every "core" order up to
//! [`MAX_CORE`] that they give. Doubling (H_2m from H_m) is the Kronecker product with
//! H_2, which the transform does as one more butterfly stage: a length n = m * 2^k runs as
//! H_m (x) H_{2^k} with m the smallest core order that divides it (see `cpu::WhtSize`).
//!
//! References: R. E. A. C. Paley, "On orthogonal matrices", J. Math. Phys. 12 (1933),
//! 311-320 (constructions I and II); J. J. Sylvester (1867) for doubling; the symmetric
//! form of construction I (right-multiplying by diag(-1, R), R the permutation a -> -a)
//! is checked for every order in the tests below.

/// Largest core order walsh builds.
pub const MAX_CORE: usize = 180;

/// The core orders: every order m <= 180 divisible by 4, not a power of two, that Paley I
/// or II gives and that is not twice a smaller one. Any multiple of 4 up to 180 is a core
/// order times a power of two, except 92, 116, 156 and 172 (which need Williamson-type or
/// other constructions walsh does not implement). Checked against [`construction`] in the
/// tests.
pub const CORE_ORDERS: [usize; 18] = [
    12, 20, 28, 36, 44, 52, 60, 68, 76, 84, 100, 108, 124, 132, 140, 148, 164, 180,
];

/// Orders divisible by 4 up to [`MAX_CORE`] that none of the constructions gives.
pub const MISSING_ORDERS: [usize; 4] = [92, 116, 156, 172];

/// How a Hadamard matrix of order m is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Construction {
    /// Paley I: m = q + 1, q a prime power with q = 3 (mod 4); skew-type, made symmetric.
    PaleyI { q: usize },
    /// Paley II: m = 2 (q + 1), q a prime power with q = 1 (mod 4); symmetric.
    PaleyII { q: usize },
}

impl Construction {
    /// The order of the matrix it builds.
    pub fn order(self) -> usize {
        match self {
            Self::PaleyI { q } => q + 1,
            Self::PaleyII { q } => 2 * (q + 1),
        }
    }

    /// The symmetric +-1 matrix, row major.
    pub fn matrix(self) -> Vec<i8> {
        match self {
            Self::PaleyI { q } => paley_i(q),
            Self::PaleyII { q } => paley_ii(q),
        }
    }
}

impl std::fmt::Display for Construction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::PaleyI { q } => write!(f, "Paley I over GF({})", prime_power_name(q)),
            Self::PaleyII { q } => write!(f, "Paley II over GF({})", prime_power_name(q)),
        }
    }
}

fn prime_power_name(q: usize) -> String {
    match prime_power(q) {
        Some((p, k)) if k > 1 => format!("{p}^{k}"),
        _ => q.to_string(),
    }
}

/// Every construction that gives order m directly (no doubling), Paley II first.
pub fn constructions(m: usize) -> Vec<Construction> {
    let mut out = Vec::new();
    if m.is_multiple_of(4) && m >= 4 {
        let q2 = m / 2 - 1;
        if q2 % 4 == 1 && prime_power(q2).is_some() {
            out.push(Construction::PaleyII { q: q2 });
        }
        let q1 = m - 1;
        if q1 % 4 == 3 && prime_power(q1).is_some() {
            out.push(Construction::PaleyI { q: q1 });
        }
    }
    out
}

/// The construction walsh uses for core order m: Paley II where it applies (symmetric as
/// built, and what the orders 12, 20 and 28 have always used), else Paley I.
pub fn construction(m: usize) -> Option<Construction> {
    constructions(m).into_iter().next()
}

/// (p, k) with q = p^k, p prime, k >= 1.
pub fn prime_power(q: usize) -> Option<(usize, u32)> {
    if q < 2 {
        return None;
    }
    let p = (2..=q).find(|d| q.is_multiple_of(*d))?;
    let (mut r, mut k) = (q, 0);
    while r.is_multiple_of(p) {
        r /= p;
        k += 1;
    }
    (r == 1).then_some((p, k))
}

/// Paley II: the symmetric conference matrix C of order q + 1 (C[0][0] = 0, C[0][k] =
/// C[k][0] = 1, C[1 + a][1 + b] = chi(a - b) over GF(q)), with 0 replaced by
/// [[1, -1], [-1, -1]] and +-1 by +-[[1, 1], [1, -1]].
fn paley_ii(q: usize) -> Vec<i8> {
    let field = Field::new(q);
    let o = q + 1;
    let m = 2 * o;
    let conference = |r: usize, s: usize| -> i8 {
        match (r, s) {
            (0, 0) => 0,
            (0, _) | (_, 0) => 1,
            _ => field.chi(field.sub(r - 1, s - 1)),
        }
    };
    let mut h = vec![0i8; m * m];
    for r in 0..o {
        for s in 0..o {
            let block: [[i8; 2]; 2] = match conference(r, s) {
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

/// Paley I, symmetric form. The skew-type matrix is H = I + C with C[0][k] = 1,
/// C[k][0] = -1, C[1 + a][1 + b] = chi(a - b) over GF(q) (antisymmetric, as chi(-1) = -1
/// for q = 3 mod 4). Right-multiplying by diag(-1, R), R the permutation b -> -b, keeps
/// H H^T = m I and gives H'[0][0] = -1, H'[0][k] = H'[k][0] = 1,
/// H'[1 + a][1 + b] = [a = -b] + chi(a + b): symmetric.
fn paley_i(q: usize) -> Vec<i8> {
    let field = Field::new(q);
    let m = q + 1;
    let mut h = vec![0i8; m * m];
    for r in 0..m {
        for s in 0..m {
            h[r * m + s] = match (r, s) {
                (0, 0) => -1,
                (0, _) | (_, 0) => 1,
                (r, s) => {
                    let sum = field.add(r - 1, s - 1);
                    if sum == 0 { 1 } else { field.chi(sum) }
                }
            };
        }
    }
    h
}

/// GF(p^k): element a stands for the polynomial sum_i d_i x^i with a = sum_i d_i p^i,
/// arithmetic modulo the first monic irreducible polynomial of degree k in that numbering
/// (x^2 + 1 for GF(9), as the order-20 matrix has always used).
struct Field {
    p: usize,
    k: usize,
    /// Low coefficients of the monic modulus x^k + sum_i modulus[i] x^i.
    modulus: Vec<usize>,
    squares: Vec<bool>,
}

impl Field {
    fn new(q: usize) -> Self {
        let (p, k) = prime_power(q).expect("Field::new: q is a prime power");
        let k = k as usize;
        let mut field = Self {
            p,
            k,
            modulus: vec![0; k],
            squares: vec![false; q],
        };
        if k > 1 {
            // The first modulus with no zero divisors is irreducible.
            field.modulus = (0..q)
                .map(|c| field.digits(c))
                .find(|m| {
                    let f = Self {
                        modulus: m.clone(),
                        squares: Vec::new(),
                        ..field
                    };
                    (1..q).all(|a| (1..q).all(|b| f.mul(a, b) != 0))
                })
                .expect("an irreducible polynomial of every degree exists");
        }
        for a in 1..q {
            let s = field.mul(a, a);
            field.squares[s] = true;
        }
        field
    }

    fn digits(&self, mut a: usize) -> Vec<usize> {
        let mut d = vec![0; self.k];
        for x in d.iter_mut() {
            *x = a % self.p;
            a /= self.p;
        }
        d
    }

    fn number(&self, d: &[usize]) -> usize {
        d.iter().rev().fold(0, |acc, &x| acc * self.p + x)
    }

    fn add(&self, a: usize, b: usize) -> usize {
        let (x, y) = (self.digits(a), self.digits(b));
        let s: Vec<usize> = x.iter().zip(&y).map(|(u, v)| (u + v) % self.p).collect();
        self.number(&s)
    }

    fn sub(&self, a: usize, b: usize) -> usize {
        let (x, y) = (self.digits(a), self.digits(b));
        let s: Vec<usize> = x
            .iter()
            .zip(&y)
            .map(|(u, v)| (u + self.p - v) % self.p)
            .collect();
        self.number(&s)
    }

    fn mul(&self, a: usize, b: usize) -> usize {
        let (x, y) = (self.digits(a), self.digits(b));
        let mut prod = vec![0; 2 * self.k];
        for (i, u) in x.iter().enumerate() {
            for (j, v) in y.iter().enumerate() {
                prod[i + j] = (prod[i + j] + u * v) % self.p;
            }
        }
        // Reduce from the top: x^k = -sum_i modulus[i] x^i.
        for top in (self.k..2 * self.k).rev() {
            let c = prod[top];
            if c == 0 {
                continue;
            }
            prod[top] = 0;
            for (i, &mi) in self.modulus.iter().enumerate() {
                let at = top - self.k + i;
                prod[at] = (prod[at] + (self.p - c) * mi) % self.p;
            }
        }
        self.number(&prod[..self.k])
    }

    /// Quadratic character: 0 for 0, 1 for a nonzero square, -1 otherwise.
    fn chi(&self, a: usize) -> i8 {
        match (a, self.squares[a]) {
            (0, _) => 0,
            (_, true) => 1,
            _ => -1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_symmetric_hadamard(h: &[i8], m: usize) -> Result<(), String> {
        if h.len() != m * m || h.iter().any(|&x| x != 1 && x != -1) {
            return Err(format!("order {m}: not an m x m +-1 matrix"));
        }
        for r in 0..m {
            for c in 0..m {
                if h[r * m + c] != h[c * m + r] {
                    return Err(format!("order {m}: not symmetric at {r},{c}"));
                }
                let dot: i32 = (0..m).map(|k| (h[r * m + k] * h[c * m + k]) as i32).sum();
                if dot != if r == c { m as i32 } else { 0 } {
                    return Err(format!("order {m}: (H H^T)[{r}][{c}] = {dot}"));
                }
            }
        }
        Ok(())
    }

    /// Every construction of every order up to 180 (both Paley constructions where both
    /// apply, so GF(27) and GF(81) are exercised though walsh uses Paley II there) is a
    /// symmetric Hadamard matrix: H = H^T and H H^T = m I.
    #[test]
    fn every_construction_is_a_symmetric_hadamard_matrix() {
        let mut fields = Vec::new();
        for m in (4..=MAX_CORE).step_by(4) {
            for c in constructions(m) {
                assert_eq!(c.order(), m);
                is_symmetric_hadamard(&c.matrix(), m).unwrap_or_else(|e| panic!("{c}: {e}"));
                fields.push(c.to_string());
            }
        }
        for name in [
            "GF(3^3)", "GF(3^2)", "GF(5^2)", "GF(7^2)", "GF(3^4)", "GF(179)",
        ] {
            assert!(
                fields.iter().any(|f| f.contains(name)),
                "{name} in {fields:?}"
            );
        }
    }

    /// The core orders are exactly the constructible multiples of 4 that are not twice a
    /// constructible order, and the missing orders are exactly those neither a core times
    /// a power of two nor constructible.
    #[test]
    fn core_and_missing_orders_follow_from_the_constructions() {
        let mut reachable = [false; MAX_CORE + 1];
        reachable[1] = true;
        reachable[2] = true;
        let mut cores = Vec::new();
        let mut missing = Vec::new();
        for m in (4..=MAX_CORE).step_by(4) {
            if reachable[m / 2] {
                reachable[m] = true;
            } else if construction(m).is_some() {
                reachable[m] = true;
                cores.push(m);
            } else {
                missing.push(m);
            }
        }
        assert_eq!(cores, CORE_ORDERS);
        assert_eq!(missing, MISSING_ORDERS);
    }

    /// The matrices of orders 12, 20 and 28 are bit for bit the ones walsh has always
    /// used (row sign masks, bit c set for -1), so Hadamard models at 768, 1280, 1792, ...
    /// decode as before.
    #[test]
    fn orders_12_20_28_are_unchanged() {
        let masks = |m: usize| -> Vec<u32> {
            let h = construction(m).unwrap().matrix();
            (0..m)
                .map(|r| (0..m).fold(0, |a, c| a | (((h[r * m + c] < 0) as u32) << c)))
                .collect()
        };
        assert_eq!(
            masks(12),
            [
                2, 2731, 968, 2414, 3872, 1466, 3212, 1766, 572, 2966, 2288, 3674
            ]
        );
        assert_eq!(masks(20)[..6], [2, 699051, 998408, 366254, 848672, 416186]);
        assert_eq!(masks(20)[19], 959894);
        assert_eq!(masks(28)[..4], [2, 178956971, 51376328, 161831534]);
        assert_eq!(masks(28)[27], 241784474);
    }

    #[test]
    fn prime_powers() {
        assert_eq!(prime_power(27), Some((3, 3)));
        assert_eq!(prime_power(81), Some((3, 4)));
        assert_eq!(prime_power(49), Some((7, 2)));
        assert_eq!(prime_power(179), Some((179, 1)));
        assert_eq!(prime_power(91), None);
        assert_eq!(prime_power(1), None);
        // 92 = 91 + 1 = 2 (45 + 1): neither 91 nor 45 is a prime power.
        assert!(constructions(92).is_empty());
    }
}
