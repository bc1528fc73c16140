//! The CPU reference decoder: one token at a time, f32, llama2.c style. It is the reference
//! the GPU decoder is tested against and the engine behind `--device cpu`.

use std::borrow::Cow;

use super::weights::{Model, Tensor, TensorData, WEIGHTS_FILE};
use super::{AttnOutput, ModelError, Query};
use crate::ops::attention::KvFormat;
use crate::ops::hadamard::cpu::{WhtSize, fwht};
use crate::ops::rope::rope_cos_sin;

/// How the query is formed, with its weights.
enum QueryWeights<'m> {
    Dense {
        q_proj: Cow<'m, [f32]>, // [d, d]
    },
    Identity,
    ResidualMlp {
        q_down: Cow<'m, [f32]>, // [query_mlp_hidden, d]
        q_up: Cow<'m, [f32]>,   // [d, query_mlp_hidden]
    },
}

/// How the heads are mixed back into the residual stream, with its weights.
enum OutputWeights<'m> {
    Dense {
        o_proj: Cow<'m, [f32]>, // [d, d]
    },
    Hadamard {
        size: WhtSize,           // n = d
        o_scale: Cow<'m, [f32]>, // [d]
        o_bias: Cow<'m, [f32]>,  // [d]
    },
}

struct LayerF32<'m> {
    input_layernorm: Cow<'m, [f32]>, // [d]
    query: QueryWeights<'m>,
    k_proj: Cow<'m, [f32]>, // [kv_dim, d], kv_dim = kv_heads * head_dim
    v_proj: Cow<'m, [f32]>, // [kv_dim, d]
    output: OutputWeights<'m>,
    post_attention_layernorm: Cow<'m, [f32]>, // [d]
    gate_proj: Cow<'m, [f32]>,                // [intermediate, d]
    up_proj: Cow<'m, [f32]>,                  // [intermediate, d]
    down_proj: Cow<'m, [f32]>,                // [d, intermediate]
}

/// Decodes one position at a time over a preallocated KV cache.
pub struct CpuDecoder<'m> {
    model: &'m Model,
    max_positions: usize,
    kv: KvFormat, // what the cache holds: each key and value head stored as it, read back
    // weights, converted to f32 once (f32 files are borrowed, f16 widened)
    embed_tokens: Cow<'m, [f32]>, // [vocab, d]
    layers: Vec<LayerF32<'m>>,
    norm: Cow<'m, [f32]>,    // [d]
    lm_head: Cow<'m, [f32]>, // [vocab, d]
    // run state
    x: Vec<f32>,           // [d] residual stream
    xn: Vec<f32>,          // [d] normalized x
    q: Vec<f32>,           // [d] query of this position
    qh: Vec<f32>,          // [query_mlp_hidden] residual query MLP hidden activation
    att: Vec<f32>,         // [max_positions] scores, then weights, of one head
    a: Vec<f32>,           // [d] attention output, heads concatenated
    o: Vec<f32>,           // [d] projected attention output, then MLP output
    hb: Vec<f32>,          // [intermediate] gate, then silu(gate) * up
    hb2: Vec<f32>,         // [intermediate] up
    rope_cos: Vec<f32>,    // [head_dim / 2] at this position
    rope_sin: Vec<f32>,    // [head_dim / 2]
    logits: Vec<f32>,      // [vocab]
    key_cache: Vec<f32>,   // [layers, max_positions, kv_dim], keys after rope
    value_cache: Vec<f32>, // [layers, max_positions, kv_dim]
    len: usize,            // positions filled
}

/// Borrows f32 data, widens f16 data, dequantizes quantized matrices (at load).
fn f32_data(t: &Tensor) -> Cow<'_, [f32]> {
    match &t.data {
        TensorData::F32(v) => Cow::Borrowed(v),
        TensorData::F16(_) | TensorData::Quant(_) => Cow::Owned(t.to_f32()),
    }
}

/// The tensor in an optional slot that the config says is present.
fn present<'m>(model: &Model, t: &'m Option<Tensor>, slot: &str) -> Result<&'m Tensor, ModelError> {
    t.as_ref().ok_or_else(|| ModelError::MissingTensor {
        path: model.dir.join(WEIGHTS_FILE),
        name: slot.to_string(),
    })
}

impl<'m> CpuDecoder<'m> {
    /// A decoder with room for `max_positions` positions (at most the model's context),
    /// its KV cache holding values of `kv` (as the GPU decoder's does).
    pub fn new(model: &'m Model, max_positions: usize, kv: KvFormat) -> Result<Self, ModelError> {
        let c = &model.config;
        if max_positions == 0 || max_positions > c.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "max_positions = {max_positions} must be between 1 and the model's context of {}",
                c.max_position_embeddings
            )));
        }
        // The fields are public: check shapes once here so the loops below cannot index
        // out of bounds.
        model.validate()?;
        kv.check_head_dim(c.head_dim())?;
        let (d, inter) = (c.hidden_size, c.intermediate_size);
        let mut layers = Vec::with_capacity(model.weights.layers.len());
        for (l, w) in model.weights.layers.iter().enumerate() {
            let slot = |n: &str| format!("model.layers.{l}.self_attn.{n}");
            let query = match c.query {
                Query::Dense => QueryWeights::Dense {
                    q_proj: f32_data(present(model, &w.q_proj, &slot("q_proj.weight"))?),
                },
                Query::Identity => QueryWeights::Identity,
                Query::ResidualMlp => QueryWeights::ResidualMlp {
                    q_down: f32_data(present(model, &w.q_down, &slot("q_down.weight"))?),
                    q_up: f32_data(present(model, &w.q_up, &slot("q_up.weight"))?),
                },
            };
            let output = match c.attn_output {
                AttnOutput::Dense => OutputWeights::Dense {
                    o_proj: f32_data(present(model, &w.o_proj, &slot("o_proj.weight"))?),
                },
                AttnOutput::Hadamard => OutputWeights::Hadamard {
                    size: WhtSize::new(d).map_err(|e| ModelError::Config {
                        path: model.dir.join(super::weights::CONFIG_FILE),
                        message: e.to_string(),
                    })?,
                    o_scale: f32_data(present(model, &w.o_scale, &slot("o_scale"))?),
                    o_bias: f32_data(present(model, &w.o_bias, &slot("o_bias"))?),
                },
            };
            layers.push(LayerF32 {
                input_layernorm: f32_data(&w.input_layernorm),
                query,
                k_proj: f32_data(&w.k_proj),
                v_proj: f32_data(&w.v_proj),
                output,
                post_attention_layernorm: f32_data(&w.post_attention_layernorm),
                gate_proj: f32_data(&w.gate_proj),
                up_proj: f32_data(&w.up_proj),
                down_proj: f32_data(&w.down_proj),
            });
        }
        let cache_len = c.num_hidden_layers * max_positions * c.kv_dim();
        Ok(Self {
            model,
            max_positions,
            kv,
            embed_tokens: f32_data(&model.weights.embed_tokens),
            layers,
            norm: f32_data(&model.weights.norm),
            lm_head: f32_data(model.lm_head()),
            x: vec![0.0; d],
            xn: vec![0.0; d],
            q: vec![0.0; d],
            qh: vec![0.0; c.query_mlp_hidden()],
            att: vec![0.0; max_positions],
            a: vec![0.0; d],
            o: vec![0.0; d],
            hb: vec![0.0; inter],
            hb2: vec![0.0; inter],
            rope_cos: vec![0.0; c.head_dim() / 2],
            rope_sin: vec![0.0; c.head_dim() / 2],
            logits: vec![0.0; c.vocab_size],
            key_cache: vec![0.0; cache_len],
            value_cache: vec![0.0; cache_len],
            len: 0,
        })
    }

    /// Runs `token` at position `pos` (which must be the next free one) and returns the
    /// logits over the vocabulary for the next token.
    pub fn forward(&mut self, token: u32, pos: usize) -> Result<&[f32], ModelError> {
        let c = &self.model.config;
        if token as usize >= c.vocab_size {
            return Err(ModelError::Input(format!(
                "token {token} is outside the vocabulary of {} tokens",
                c.vocab_size
            )));
        }
        if pos >= self.max_positions {
            return Err(ModelError::Input(format!(
                "position {pos} is past the decoder's {} positions",
                self.max_positions
            )));
        }
        if pos != self.len {
            return Err(ModelError::Input(format!(
                "position {pos} given, but the next free position is {}",
                self.len
            )));
        }
        let d = c.hidden_size;
        let head_dim = c.head_dim();
        let kv_dim = c.kv_dim();
        // Grouped-query attention: query heads per KV head (1 without grouping).
        let group = c.num_attention_heads / c.kv_heads();
        let half = head_dim / 2;
        let eps = c.rms_norm_eps as f32;
        let att_scale = 1.0 / (head_dim as f32).sqrt();

        let t = token as usize;
        self.x
            .copy_from_slice(&self.embed_tokens[t * d..(t + 1) * d]);
        for i in 0..half {
            (self.rope_cos[i], self.rope_sin[i]) = rope_cos_sin(pos, i, head_dim, c.rope_theta);
        }

        for (l, layer) in self.layers.iter().enumerate() {
            // this layer's cache, [max_positions, kv_dim], and this position's row in it
            let layer_len = self.max_positions * kv_dim;
            let cache = l * layer_len..(l + 1) * layer_len;
            let key_cache = &mut self.key_cache[cache.clone()];
            let value_cache = &mut self.value_cache[cache];
            let row = pos * kv_dim..(pos + 1) * kv_dim;

            // attention: q, k, v of this position; k and v go straight into the cache
            rmsnorm(&mut self.xn, &self.x, &layer.input_layernorm, eps);
            match &layer.query {
                QueryWeights::Dense { q_proj } => matmul(&mut self.q, &self.xn, q_proj),
                QueryWeights::Identity => self.q.copy_from_slice(&self.xn),
                QueryWeights::ResidualMlp { q_down, q_up } => {
                    matmul(&mut self.qh, &self.xn, q_down);
                    self.qh.iter_mut().for_each(|v| *v = silu(*v));
                    matmul(&mut self.q, &self.qh, q_up);
                    for (q, xn) in self.q.iter_mut().zip(&self.xn) {
                        *q += xn;
                    }
                }
            }
            matmul(&mut key_cache[row.clone()], &self.xn, &layer.k_proj);
            matmul(&mut value_cache[row.clone()], &self.xn, &layer.v_proj);
            rope(&mut self.q, head_dim, &self.rope_cos, &self.rope_sin);
            rope(
                &mut key_cache[row.clone()],
                head_dim,
                &self.rope_cos,
                &self.rope_sin,
            );
            // What the cache holds, read back: rounded to f16, or quantized per head
            // (rotated first for q8r / q4r) and dequantized, rotated back. Attending over
            // these is the GPU's attention over its cache with rotated q and a rotated-back
            // output (the rotation is orthogonal and its own inverse).
            self.kv.store(&mut key_cache[row.clone()], head_dim);
            self.kv.store(&mut value_cache[row], head_dim);

            // causal attention per query head over positions 0..=pos; query head h reads
            // KV head h / group
            for h in 0..c.num_attention_heads {
                let head = h * head_dim..(h + 1) * head_dim;
                let kv_head = (h / group) * head_dim..(h / group + 1) * head_dim;
                let q = &self.q[head.clone()];
                let att = &mut self.att[..=pos];
                for (s, score) in att.iter_mut().enumerate() {
                    let k = &key_cache[s * kv_dim..(s + 1) * kv_dim][kv_head.clone()];
                    *score = dot(q, k) * att_scale;
                }
                softmax(att);
                let a = &mut self.a[head];
                a.fill(0.0);
                for (s, &w) in att.iter().enumerate() {
                    let v = &value_cache[s * kv_dim..(s + 1) * kv_dim][kv_head.clone()];
                    for (a, v) in a.iter_mut().zip(v) {
                        *a += w * v;
                    }
                }
            }

            // output projection and residual
            match &layer.output {
                OutputWeights::Dense { o_proj } => matmul(&mut self.o, &self.a, o_proj),
                OutputWeights::Hadamard {
                    size,
                    o_scale,
                    o_bias,
                } => {
                    // fwht is normalized: o = o_scale * H a / sqrt(d) + o_bias
                    self.o.copy_from_slice(&self.a);
                    fwht(&mut self.o, *size);
                    for ((o, s), b) in self.o.iter_mut().zip(o_scale.iter()).zip(o_bias.iter()) {
                        *o = *o * s + b;
                    }
                }
            }
            for (x, o) in self.x.iter_mut().zip(&self.o) {
                *x += o;
            }

            // MLP: x += down(silu(gate(xn)) * up(xn))
            rmsnorm(&mut self.xn, &self.x, &layer.post_attention_layernorm, eps);
            matmul(&mut self.hb, &self.xn, &layer.gate_proj);
            matmul(&mut self.hb2, &self.xn, &layer.up_proj);
            for (g, u) in self.hb.iter_mut().zip(&self.hb2) {
                *g = silu(*g) * u;
            }
            matmul(&mut self.o, &self.hb, &layer.down_proj);
            for (x, o) in self.x.iter_mut().zip(&self.o) {
                *x += o;
            }
        }

        rmsnorm(&mut self.xn, &self.x, &self.norm, eps);
        matmul(&mut self.logits, &self.xn, &self.lm_head);
        self.len = pos + 1;
        Ok(&self.logits)
    }

    /// Forgets every position; the cache is overwritten as positions are filled again.
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// out = x / sqrt(mean(x^2) + eps) * weight
fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let mean_square = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (mean_square + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * inv * w;
    }
}

/// Dot product with eight partial sums: the compiler may not reorder a single f32 sum,
/// and eight independent chains let it vectorize (by far the most time is spent here).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// out = w @ x with w row major [out.len(), x.len()].
fn matmul(out: &mut [f32], x: &[f32], w: &[f32]) {
    for (o, row) in out.iter_mut().zip(w.chunks_exact(x.len())) {
        *o = dot(row, x);
    }
}

/// Rotates each head of `v` in place, pairing element i with i + head_dim / 2.
fn rope(v: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for head in v.chunks_exact_mut(head_dim) {
        let (lo, hi) = head.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (lo[i], hi[i]);
            lo[i] = a * cos[i] - b * sin[i];
            hi[i] = b * cos[i] + a * sin[i];
        }
    }
}

/// In-place softmax, shifted by the maximum so exp cannot overflow.
fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::Config;
    use crate::model::init::random_tensors;
    use crate::ops::hadamard::cpu::dense_matrix;

    fn config(d: usize, attn_output: AttnOutput, query: Query, tied: bool) -> Config {
        Config {
            hidden_size: d,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 2 * d + 8,
            vocab_size: 256,
            max_position_embeddings: 16,
            tie_word_embeddings: tied,
            attn_output,
            query,
            ..Default::default()
        }
    }

    type Named = Vec<(String, Vec<usize>, Vec<f32>)>;

    fn model(config: &Config, tensors: Named) -> Model {
        let tensors = tensors
            .into_iter()
            .map(|(name, shape, v)| Tensor {
                name,
                shape,
                data: TensorData::F32(v),
            })
            .collect();
        Model::from_tensors(Path::new("test-model"), config.clone(), tensors).unwrap()
    }

    fn get<'a>(ts: &'a mut Named, name: &str) -> &'a mut Vec<f32> {
        &mut ts.iter_mut().find(|t| t.0 == name).unwrap().2
    }

    /// Logits of every position, decoding `tokens` one by one.
    fn decode(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
        let mut dec =
            CpuDecoder::new(model, model.config.max_position_embeddings, KvFormat::F32).unwrap();
        tokens
            .iter()
            .enumerate()
            .map(|(pos, &t)| dec.forward(t, pos).unwrap().to_vec())
            .collect()
    }

    const TOKENS: [u32; 16] = [
        72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 0, 255, 10,
    ];

    /// Straightforward f64 recomputation of the logits of the last position of `tokens`,
    /// with no cache: every position of every layer is recomputed from explicit matrices.
    /// Independent of the decoder: its own rope angles, and the dense Hadamard matrix
    /// instead of the fast transform.
    fn reference_last_logits(model: &Model, tokens: &[u32]) -> Vec<f64> {
        let c = &model.config;
        let (d, hd, nh) = (c.hidden_size, c.head_dim(), c.num_attention_heads);
        let w = |t: &Tensor| -> Vec<f64> { t.to_f32().iter().map(|&v| v as f64).collect() };
        // y = W x with W [rows, x.len()]
        let apply = |m: &[f64], x: &[f64]| -> Vec<f64> {
            m.chunks(x.len())
                .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
                .collect()
        };
        let norm = |x: &[f64], g: &[f64]| -> Vec<f64> {
            let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
            let inv = 1.0 / (ms + c.rms_norm_eps).sqrt();
            x.iter().zip(g).map(|(v, g)| v * inv * g).collect()
        };
        let silu = |v: f64| v / (1.0 + (-v).exp());
        // Rotates every head of v (q's nh heads, or k's kv heads).
        let rot = |v: &mut [f64], pos: usize| {
            for h in 0..v.len() / hd {
                for i in 0..hd / 2 {
                    let angle = pos as f64 / c.rope_theta.powf((2 * i) as f64 / hd as f64);
                    let (a, b) = (v[h * hd + i], v[h * hd + i + hd / 2]);
                    v[h * hd + i] = a * angle.cos() - b * angle.sin();
                    v[h * hd + i + hd / 2] = b * angle.cos() + a * angle.sin();
                }
            }
        };
        let embed = w(&model.weights.embed_tokens);
        // xs[t]: residual stream of position t, [T][d]
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| embed[t as usize * d..(t as usize + 1) * d].to_vec())
            .collect();
        for lw in &model.weights.layers {
            let xn: Vec<Vec<f64>> = xs
                .iter()
                .map(|x| norm(x, &w(&lw.input_layernorm)))
                .collect();
            let mut qs: Vec<Vec<f64>> = xn
                .iter()
                .map(|x| match c.query {
                    Query::Dense => apply(&w(lw.q_proj.as_ref().unwrap()), x),
                    Query::Identity => x.clone(),
                    Query::ResidualMlp => {
                        let hidden: Vec<f64> = apply(&w(lw.q_down.as_ref().unwrap()), x)
                            .into_iter()
                            .map(silu)
                            .collect();
                        let up = apply(&w(lw.q_up.as_ref().unwrap()), &hidden);
                        x.iter().zip(up).map(|(a, b)| a + b).collect()
                    }
                })
                .collect();
            let mut ks: Vec<Vec<f64>> = xn.iter().map(|x| apply(&w(&lw.k_proj), x)).collect();
            let vs: Vec<Vec<f64>> = xn.iter().map(|x| apply(&w(&lw.v_proj), x)).collect();
            for (pos, (q, k)) in qs.iter_mut().zip(ks.iter_mut()).enumerate() {
                rot(q, pos);
                rot(k, pos);
            }
            for t in 0..xs.len() {
                let mut a = vec![0.0; d];
                for h in 0..nh {
                    let r = h * hd..(h + 1) * hd;
                    // grouped-query attention: KV head h * kv_heads / nh
                    let g = h * c.kv_heads() / nh;
                    let kr = g * hd..(g + 1) * hd;
                    let scores: Vec<f64> = (0..=t)
                        .map(|s| {
                            let dot: f64 = qs[t][r.clone()]
                                .iter()
                                .zip(&ks[s][kr.clone()])
                                .map(|(a, b)| a * b)
                                .sum();
                            dot / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for (s, e) in e.iter().enumerate() {
                        for (i, j) in r.clone().zip(kr.clone()) {
                            a[i] += e / sum * vs[s][j];
                        }
                    }
                }
                let o: Vec<f64> = match c.attn_output {
                    AttnOutput::Dense => apply(&w(lw.o_proj.as_ref().unwrap()), &a),
                    AttnOutput::Hadamard => {
                        let h = dense_matrix(WhtSize::new(d).unwrap());
                        let (g, b) = (
                            w(lw.o_scale.as_ref().unwrap()),
                            w(lw.o_bias.as_ref().unwrap()),
                        );
                        apply(&h, &a)
                            .iter()
                            .zip(g)
                            .zip(b)
                            .map(|((v, g), b)| v * g + b)
                            .collect()
                    }
                };
                for (x, o) in xs[t].iter_mut().zip(o) {
                    *x += o;
                }
            }
            for x in xs.iter_mut() {
                let xn = norm(x, &w(&lw.post_attention_layernorm));
                let gate = apply(&w(&lw.gate_proj), &xn);
                let up = apply(&w(&lw.up_proj), &xn);
                let hidden: Vec<f64> = gate.iter().zip(up).map(|(g, u)| silu(*g) * u).collect();
                for (x, o) in x.iter_mut().zip(apply(&w(&lw.down_proj), &hidden)) {
                    *x += o;
                }
            }
        }
        let last = norm(xs.last().unwrap(), &w(&model.weights.norm));
        apply(&w(model.lm_head()), &last)
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn incremental_decoding_matches_full_recomputation_for_every_variant() {
        for d in [32, 48] {
            for attn_output in [AttnOutput::Dense, AttnOutput::Hadamard] {
                for query in [Query::Dense, Query::Identity, Query::ResidualMlp] {
                    for tied in [false, true] {
                        let c = config(d, attn_output, query, tied);
                        let m = model(&c, random_tensors(&c, 11));
                        let logits = decode(&m, &TOKENS);
                        for t in 1..=TOKENS.len() {
                            let want = reference_last_logits(&m, &TOKENS[..t]);
                            let got = &logits[t - 1];
                            let spread = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
                            // f32 against f64 over two layers: observed below 5e-7 of the
                            // largest logit (a few ulps); a wrong index or sign gives O(1).
                            let tol = 4e-6 * spread.max(1.0);
                            for (v, (g, w)) in got.iter().zip(&want).enumerate() {
                                assert!(
                                    (*g as f64 - w).abs() <= tol,
                                    "d {d} {} tied {tied}: position {} token {v}: {g} vs {w}",
                                    c.variant(),
                                    t - 1
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn grouped_query_attention_matches_full_recomputation() {
        // 8 heads of 4 (d 32) or 6 (d 48) on 2 KV heads (4:1) and on 1 (8:1).
        for (d, kv_heads) in [(32, 2), (48, 1)] {
            for attn_output in [AttnOutput::Dense, AttnOutput::Hadamard] {
                for query in [Query::Dense, Query::Identity] {
                    let c = Config {
                        num_attention_heads: 8,
                        num_key_value_heads: Some(kv_heads),
                        ..config(d, attn_output, query, false)
                    };
                    let m = model(&c, random_tensors(&c, 13));
                    assert_eq!(m.weights.layers[0].k_proj.shape, [c.kv_dim(), d]);
                    let logits = decode(&m, &TOKENS);
                    for t in [1, 7, TOKENS.len()] {
                        let want = reference_last_logits(&m, &TOKENS[..t]);
                        let spread = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
                        let tol = 4e-6 * spread.max(1.0);
                        for (g, w) in logits[t - 1].iter().zip(&want) {
                            assert!(
                                (*g as f64 - w).abs() <= tol,
                                "d {d} kv {kv_heads} {}: position {}: {g} vs {w}",
                                c.variant(),
                                t - 1
                            );
                        }
                    }
                }
            }
        }
    }

    /// The model with its k and v projections' heads repeated for every query head of
    /// their group: the same function without grouping.
    fn ungrouped(c: &Config, tensors: &Named) -> (Config, Named) {
        let (hd, group) = (c.head_dim(), c.num_attention_heads / c.kv_heads());
        let d = c.hidden_size;
        let tensors = tensors
            .iter()
            .map(|(name, shape, v)| {
                if name.ends_with("k_proj.weight") || name.ends_with("v_proj.weight") {
                    // rows of KV head g become the rows of query heads g*group..(g+1)*group
                    let rows: Vec<f32> = v
                        .chunks(hd * d)
                        .flat_map(|head| std::iter::repeat_n(head, group).flatten().copied())
                        .collect();
                    (name.clone(), vec![d, d], rows)
                } else {
                    (name.clone(), shape.clone(), v.clone())
                }
            })
            .collect();
        let full = Config {
            num_key_value_heads: None,
            ..c.clone()
        };
        (full, tensors)
    }

    #[test]
    fn grouped_heads_equal_the_model_with_kv_heads_repeated() {
        // Exact: each query head's scores and weighted values are the same f32 sums over
        // the same keys and values, whether its KV head is shared or a copy.
        for (heads, kv_heads) in [(8, 2), (8, 1), (4, 2)] {
            for kv in [KvFormat::F32, KvFormat::F16, KvFormat::Q8Rot] {
                for query in [Query::Dense, Query::ResidualMlp] {
                    let c = Config {
                        num_attention_heads: heads,
                        num_key_value_heads: Some(kv_heads),
                        ..config(64, AttnOutput::Hadamard, query, false)
                    };
                    let tensors = random_tensors(&c, 17);
                    let (fc, ft) = ungrouped(&c, &tensors);
                    let (gm, fm) = (model(&c, tensors), model(&fc, ft));
                    let run = |m: &Model| {
                        let mut dec = CpuDecoder::new(m, 16, kv).unwrap();
                        TOKENS
                            .iter()
                            .enumerate()
                            .map(|(pos, &t)| dec.forward(t, pos).unwrap().to_vec())
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(
                        run(&gm),
                        run(&fm),
                        "{heads}:{kv_heads} {kv} {query:?}: grouped logits differ"
                    );
                }
            }
        }
    }

    #[test]
    fn hadamard_with_unit_scale_equals_dense_hadamard_matrix() {
        for d in [32, 48] {
            let hc = config(d, AttnOutput::Hadamard, Query::Dense, false);
            let dc = config(d, AttnOutput::Dense, Query::Dense, false);
            let mut ht = random_tensors(&hc, 3);
            let h: Vec<f32> = dense_matrix(WhtSize::new(d).unwrap())
                .iter()
                .map(|&v| v as f32)
                .collect();
            let mut dt = Vec::new();
            for (name, shape, v) in &mut ht {
                if name.ends_with("o_scale") {
                    v.fill(1.0);
                } else if name.ends_with("o_bias") {
                    v.fill(0.0);
                    let o_proj = name.replace("o_bias", "o_proj.weight");
                    dt.push((o_proj, vec![d, d], h.clone()));
                } else {
                    dt.push((name.clone(), shape.clone(), v.clone()));
                }
            }
            let (hm, dm) = (model(&hc, ht), model(&dc, dt));
            for (g, w) in decode(&hm, &TOKENS).iter().zip(decode(&dm, &TOKENS)) {
                // Same f32 arithmetic except the fast transform against a dense product,
                // which sums in another order: observed below 6e-6 on logits of about 10.
                let diff = max_abs_diff(g, &w);
                assert!(diff < 3e-5, "d {d}: logits differ by {diff}");
            }
        }
    }

    #[test]
    fn identity_query_equals_dense_identity_and_zero_residual_mlp() {
        let d = 32;
        let ic = config(d, AttnOutput::Hadamard, Query::Identity, false);
        let it = random_tensors(&ic, 5);
        let identity = decode(&model(&ic, it.clone()), &TOKENS);

        // q_proj = I: every q is a single exact product, so the logits are bit-identical.
        let dc = config(d, AttnOutput::Hadamard, Query::Dense, false);
        let mut dt = random_tensors(&dc, 5);
        let eye: Vec<f32> = (0..d * d)
            .map(|i| i.is_multiple_of(d + 1) as u8 as f32)
            .collect();
        for l in 0..2 {
            *get(
                &mut dt,
                &format!("model.layers.{l}.self_attn.q_proj.weight"),
            ) = eye.clone();
        }
        assert_eq!(decode(&model(&dc, dt), &TOKENS), identity);

        // q_up = 0: q = xn + 0 exactly.
        let rc = config(d, AttnOutput::Hadamard, Query::ResidualMlp, false);
        let mut rt = random_tensors(&rc, 5);
        for l in 0..2 {
            get(&mut rt, &format!("model.layers.{l}.self_attn.q_up.weight")).fill(0.0);
        }
        assert_eq!(decode(&model(&rc, rt.clone()), &TOKENS), identity);

        // ... and the random residual MLP does change the query.
        let rt = random_tensors(&rc, 5);
        assert_ne!(decode(&model(&rc, rt), &TOKENS), identity);
    }

    #[test]
    fn tied_embeddings_read_the_embedding_as_lm_head() {
        let tc = config(32, AttnOutput::Dense, Query::Dense, true);
        let tt = random_tensors(&tc, 9);
        let embed = tt[0].2.clone();
        let tied = model(&tc, tt.clone());
        assert!(tied.weights.lm_head.is_none());
        assert_eq!(tied.lm_head().name, "model.embed_tokens.weight");

        let uc = config(32, AttnOutput::Dense, Query::Dense, false);
        let mut ut = tt;
        ut.push(("lm_head.weight".into(), vec![256, 32], embed));
        let untied = model(&uc, ut);
        assert_eq!(untied.parameter_count(), tied.parameter_count() + 256 * 32);
        assert_eq!(decode(&tied, &TOKENS), decode(&untied, &TOKENS));
    }

    #[test]
    fn f16_weights_decode_like_their_f32_values() {
        let c = config(32, AttnOutput::Hadamard, Query::ResidualMlp, false);
        let halves: Vec<Tensor> = random_tensors(&c, 2)
            .into_iter()
            .map(|(name, shape, v)| Tensor {
                name,
                shape,
                data: TensorData::F16(
                    v.iter()
                        .map(|&x| half::f16::from_f32(x).to_bits())
                        .collect(),
                ),
            })
            .collect();
        let widened: Vec<Tensor> = halves
            .iter()
            .map(|t| Tensor {
                data: TensorData::F32(t.to_f32()),
                ..t.clone()
            })
            .collect();
        let h = Model::from_tensors(Path::new("h"), c.clone(), halves).unwrap();
        let f = Model::from_tensors(Path::new("f"), c, widened).unwrap();
        assert_eq!(decode(&h, &TOKENS), decode(&f, &TOKENS));
    }

    #[test]
    fn random_logits_are_well_separated() {
        let c = config(32, AttnOutput::Hadamard, Query::Dense, false);
        let m = model(&c, random_tensors(&c, 1));
        for logits in decode(&m, &TOKENS) {
            let mean = logits.iter().sum::<f32>() / 256.0;
            let std = (logits.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 256.0).sqrt();
            assert!((2.0..8.0).contains(&std), "logit std {std}");
            let mut sorted = logits.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            assert!(sorted[0] - sorted[1] > 1e-3, "top two logits {sorted:?}");
        }
    }

    #[test]
    fn rejects_bad_input_and_keeps_its_state() {
        let c = config(32, AttnOutput::Dense, Query::Identity, false);
        let m = model(&c, random_tensors(&c, 4));
        for n in [0, 17] {
            let e = CpuDecoder::new(&m, n, KvFormat::F32).err().unwrap();
            assert!(matches!(e, ModelError::Input(_)), "{e}");
        }
        let mut dec = CpuDecoder::new(&m, 4, KvFormat::F32).unwrap();
        assert!(dec.is_empty());
        let first = dec.forward(65, 0).unwrap().to_vec();
        assert_eq!(first.len(), 256);

        let e = dec.forward(256, 1).unwrap_err();
        assert!(
            matches!(e, ModelError::Input(ref s) if s.contains("token 256")),
            "{e}"
        );
        let e = dec.forward(66, 2).unwrap_err(); // skips position 1
        assert!(
            matches!(e, ModelError::Input(ref s) if s.contains("next free position is 1")),
            "{e}"
        );
        let e = dec.forward(66, 0).unwrap_err(); // repeats position 0
        assert!(matches!(e, ModelError::Input(_)), "{e}");
        assert_eq!(dec.len(), 1);

        for pos in 1..4 {
            dec.forward(66, pos).unwrap();
        }
        assert_eq!(dec.len(), 4);
        let e = dec.forward(66, 4).unwrap_err();
        assert!(
            matches!(e, ModelError::Input(ref s) if s.contains("past the decoder's 4")),
            "{e}"
        );

        // After a reset the cache is overwritten: the same first token gives the same logits.
        dec.reset();
        assert!(dec.is_empty());
        assert_eq!(dec.forward(65, 0).unwrap(), &first[..]);
    }

    #[test]
    fn rejects_a_model_edited_into_inconsistency() {
        let c = config(32, AttnOutput::Dense, Query::Dense, false);
        let mut m = model(&c, random_tensors(&c, 4));
        m.weights.layers[1].q_proj = None;
        let e = CpuDecoder::new(&m, 4, KvFormat::F32).err().unwrap();
        assert!(
            matches!(e, ModelError::MissingTensor { ref name, .. } if name == "model.layers.1.self_attn.q_proj.weight"),
            "{e}"
        );
        let mut m = model(&c, random_tensors(&c, 4));
        m.weights.layers[0].down_proj.shape = vec![72, 32];
        let e = CpuDecoder::new(&m, 4, KvFormat::F32).err().unwrap();
        assert!(matches!(e, ModelError::Shape { .. }), "{e}");
        let mut m = model(&c, random_tensors(&c, 4));
        m.config.num_attention_heads = 0;
        let e = CpuDecoder::new(&m, 4, KvFormat::F32).err().unwrap();
        assert!(matches!(e, ModelError::Config { .. }), "{e}");
        let mut m = model(&c, random_tensors(&c, 4));
        m.weights.norm.data = TensorData::F32(vec![1.0; 31]);
        let e = CpuDecoder::new(&m, 4, KvFormat::F32).err().unwrap();
        assert!(
            matches!(e, ModelError::Input(ref s) if s.contains("model.norm.weight")),
            "{e}"
        );
    }
}
