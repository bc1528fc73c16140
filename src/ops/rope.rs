//! Rotary position embedding (`shaders/rope.wgsl`), Hugging Face llama "rotate_half"
//! pairing: element i of a head pairs with element i + head_dim / 2.

/// cos and sin of the rotation of pair `i` (0 <= i < head_dim / 2) at position `pos`:
/// angle = pos * theta^(-2i / head_dim), computed in f64 and rounded once to f32. The GPU
/// reads a table built from this function and the CPU decoder calls it, so both rotate
/// by exactly the same values.
pub fn rope_cos_sin(pos: usize, i: usize, head_dim: usize, theta: f64) -> (f32, f32) {
    let inv_freq = theta.powf(-2.0 * i as f64 / head_dim as f64);
    let angle = pos as f64 * inv_freq;
    (angle.cos() as f32, angle.sin() as f32)
}
