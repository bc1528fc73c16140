//! The model of docs/model-format.md as candle tensor ops, batched over whole sequences so
//! it can be trained: the same names, shapes and arithmetic as walsh's `CpuDecoder`.
//!
//! Only ops whose backward pass candle implements are used (docs/measured.md, Training):
//! rmsnorm, softmax and rope are written out with plain tensor ops instead of candle's
//! fused kernels, which silently drop gradients. [`TrainModel::loss`]'s callers check that
//! every parameter receives a gradient.
//!
//! The Hadamard output is a matmul with walsh's own dense matrix and the rotary tables are
//! walsh's `rope_cos_sin`, so the trainer and the engine agree by construction.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor, Var};
use walsh::model::init::write_model;
use walsh::model::weights::expected_tensors;
use walsh::model::{AttnOutput, Config, Query};
use walsh::ops::WeightFormat;
use walsh::ops::hadamard::cpu::{WhtSize, dense_matrix};
use walsh::ops::rope::rope_cos_sin;

use crate::error::TrainError;
use crate::rng::{SplitMix64, fnv1a};

/// Named tensors as walsh writes them: (name, shape, row-major values).
pub type NamedTensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// One trainable tensor.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub var: Var,
    /// Whether AdamW decays it: the projection matrices and lm_head. Norm weights,
    /// o_scale and o_bias are gains and offsets with a natural value of 1 or 0, and the
    /// embedding is a lookup table whose rows for rare bytes would only shrink.
    pub decay: bool,
}

enum QueryParams {
    Dense {
        q_proj: Var, // [d, d]
    },
    Identity,
    ResidualMlp {
        q_down: Var, // [query_mlp_hidden, d]
        q_up: Var,   // [d, query_mlp_hidden]
    },
}

enum OutputParams {
    Dense {
        o_proj: Var, // [d, d]
    },
    Hadamard {
        o_scale: Var, // [d]
        o_bias: Var,  // [d]
        /// H / sqrt(d) from walsh's definition, symmetric, a constant: [d, d].
        matrix: Tensor,
    },
}

struct Layer {
    input_layernorm: Var, // [d]
    query: QueryParams,
    k_proj: Var, // [kv_dim, d], kv_dim = kv_heads * head_dim (d without grouping)
    v_proj: Var, // [kv_dim, d]
    output: OutputParams,
    post_attention_layernorm: Var, // [d]
    gate_proj: Var,                // [intermediate, d]
    up_proj: Var,                  // [intermediate, d]
    down_proj: Var,                // [d, intermediate]
}

/// The trainable model: parameters as candle `Var`s plus the constant tables.
pub struct TrainModel {
    config: Config,
    params: Vec<Param>, // in expected_tensors order
    embed_tokens: Var,  // [vocab, d]
    layers: Vec<Layer>,
    norm: Var,        // [d]
    lm_head: Var,     // [vocab, d]; the embedding itself when tied
    rope_cos: Tensor, // [context, head_dim / 2]
    rope_sin: Tensor, // [context, head_dim / 2]
    mask: Tensor,     // [context, context]: 0 on and below the diagonal, -inf above
}

/// The trainer's initial values for `config`, in expected_tensors order. Every matrix is
/// N(0, 1/in), so each projection keeps the RMS of its input: the attention branch of the
/// dense output (o_proj) and of the Hadamard output (an orthogonal map with o_scale = 1)
/// start at the same size, which keeps the variants comparable. The embedding is N(0, 1),
/// norm weights and o_scale are 1, o_bias is 0. Each tensor draws from its own stream
/// (seed and name), so variants trained with one seed share their common tensors' start.
pub fn init_tensors(config: &Config, seed: u64) -> NamedTensors {
    expected_tensors(config)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let values = if name.ends_with("norm.weight") || name.ends_with(".o_scale") {
                vec![1.0; n]
            } else if name.ends_with(".o_bias") {
                vec![0.0; n]
            } else {
                let std = if name == "model.embed_tokens.weight" {
                    1.0
                } else {
                    1.0 / (shape[1] as f64).sqrt()
                };
                let mut rng = SplitMix64(seed ^ fnv1a(&name));
                (0..n).map(|_| (std * rng.normal()) as f32).collect()
            };
            (name, shape, values)
        })
        .collect()
}

impl TrainModel {
    /// Builds the model from exactly the tensors `config` implies (any order), held as
    /// `dtype` (F32 for training; F64 for gradient checks).
    pub fn from_tensors(
        config: &Config,
        tensors: NamedTensors,
        dtype: DType,
    ) -> Result<Self, TrainError> {
        config.validate().map_err(TrainError::Input)?;
        let device = Device::Cpu;
        let mut given: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
        for (name, shape, values) in tensors {
            if given.insert(name.clone(), (shape, values)).is_some() {
                return Err(TrainError::Input(format!("tensor `{name}` is given twice")));
            }
        }
        let mut params = Vec::new();
        let mut vars = HashMap::new();
        for (name, shape) in expected_tensors(config) {
            let (found, values) = given.remove(&name).ok_or_else(|| {
                TrainError::Input(format!(
                    "tensor `{name}` is missing for variant {}",
                    config.variant()
                ))
            })?;
            if found != shape || values.len() != shape.iter().product::<usize>() {
                return Err(TrainError::Input(format!(
                    "tensor `{name}` has shape {found:?} and {} values, expected {shape:?}",
                    values.len()
                )));
            }
            let t = Tensor::from_vec(values, shape.as_slice(), &device)?.to_dtype(dtype)?;
            let var = Var::from_tensor(&t)?;
            let decay = shape.len() == 2 && name != "model.embed_tokens.weight";
            vars.insert(name.clone(), var.clone());
            params.push(Param { name, var, decay });
        }
        if let Some(extra) = given.keys().min() {
            return Err(TrainError::Input(format!(
                "tensor `{extra}` has no place in variant {}",
                config.variant()
            )));
        }

        let d = config.hidden_size;
        let hadamard = match config.attn_output {
            AttnOutput::Dense => None,
            AttnOutput::Hadamard => {
                // Config::validate accepted d as a transform size.
                let size = WhtSize::new(d).map_err(|e| TrainError::Input(e.to_string()))?;
                Some(Tensor::from_vec(dense_matrix(size), (d, d), &device)?.to_dtype(dtype)?)
            }
        };
        // expected_tensors listed every name below for this config, so each lookup succeeds.
        let var = |name: &str| vars[name].clone();
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let p = |n: &str| format!("model.layers.{l}.{n}");
                let attn = |n: &str| var(&p(&format!("self_attn.{n}")));
                Layer {
                    input_layernorm: var(&p("input_layernorm.weight")),
                    query: match config.query {
                        Query::Dense => QueryParams::Dense {
                            q_proj: attn("q_proj.weight"),
                        },
                        Query::Identity => QueryParams::Identity,
                        Query::ResidualMlp => QueryParams::ResidualMlp {
                            q_down: attn("q_down.weight"),
                            q_up: attn("q_up.weight"),
                        },
                    },
                    k_proj: attn("k_proj.weight"),
                    v_proj: attn("v_proj.weight"),
                    output: match &hadamard {
                        None => OutputParams::Dense {
                            o_proj: attn("o_proj.weight"),
                        },
                        Some(matrix) => OutputParams::Hadamard {
                            o_scale: attn("o_scale"),
                            o_bias: attn("o_bias"),
                            matrix: matrix.clone(), // shares the storage
                        },
                    },
                    post_attention_layernorm: var(&p("post_attention_layernorm.weight")),
                    gate_proj: var(&p("mlp.gate_proj.weight")),
                    up_proj: var(&p("mlp.up_proj.weight")),
                    down_proj: var(&p("mlp.down_proj.weight")),
                }
            })
            .collect();
        let embed_tokens = var("model.embed_tokens.weight");
        let lm_head = if config.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            var("lm_head.weight")
        };

        let ctx = config.max_position_embeddings;
        let head_dim = config.head_dim();
        let half = head_dim / 2;
        let (mut cos, mut sin) = (
            Vec::with_capacity(ctx * half),
            Vec::with_capacity(ctx * half),
        );
        for pos in 0..ctx {
            for i in 0..half {
                let (c, s) = rope_cos_sin(pos, i, head_dim, config.rope_theta);
                cos.push(c);
                sin.push(s);
            }
        }
        let mask: Vec<f32> = (0..ctx * ctx)
            .map(|i| {
                if i % ctx > i / ctx {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Self {
            config: config.clone(),
            params,
            embed_tokens,
            layers,
            norm: var("model.norm.weight"),
            lm_head,
            rope_cos: Tensor::from_vec(cos, (ctx, half), &device)?.to_dtype(dtype)?,
            rope_sin: Tensor::from_vec(sin, (ctx, half), &device)?.to_dtype(dtype)?,
            mask: Tensor::from_vec(mask, (ctx, ctx), &device)?.to_dtype(dtype)?,
        })
    }

    /// Loads a model directory through walsh (f16 values widened exactly to f32), so the
    /// trainer scores the very weights walsh runs.
    pub fn load(dir: &Path) -> Result<Self, TrainError> {
        let model = walsh::model::weights::Model::load(dir)?;
        let tensors = model
            .weights
            .tensors()
            .into_iter()
            .map(|t| (t.name.clone(), t.shape.clone(), t.to_f32()))
            .collect();
        Self::from_tensors(&model.config, tensors, DType::F32)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The parameters in expected_tensors order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    /// Logits for every position: tokens [batch, seq] (u32, seq <= context) ->
    /// [batch, seq, vocab]. Position t sees tokens 0..=t of its row.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor, TrainError> {
        let c = &self.config;
        let (b, t) = tokens.dims2()?;
        if t == 0 || t > c.max_position_embeddings {
            return Err(TrainError::Input(format!(
                "sequence length {t} must be between 1 and the context of {}",
                c.max_position_embeddings
            )));
        }
        let (d, h, kv_h) = (c.hidden_size, c.num_attention_heads, c.kv_heads());
        let head_dim = c.head_dim();
        let eps = c.rms_norm_eps;
        let n = b * t; // rows: every position of every sequence
        let cos = self.rope_cos.narrow(0, 0, t)?; // [t, half]
        let sin = self.rope_sin.narrow(0, 0, t)?;
        let mask = self.mask.narrow(0, 0, t)?.narrow(1, 0, t)?; // [t, t]
        // [n, heads * head_dim] -> [b, heads, t, head_dim]
        let heads = |x: &Tensor, heads: usize| -> candle_core::Result<Tensor> {
            x.reshape((b, t, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        // Grouped-query attention: [b, kv_h, t, head_dim] -> [b, h, t, head_dim], KV head g
        // repeated for query heads g * group .. (g + 1) * group (HF's repeat_kv; walsh's
        // query head h reads KV head h / group).
        let group = h / kv_h;
        let repeat_kv = |x: Tensor| -> candle_core::Result<Tensor> {
            if group == 1 {
                return Ok(x);
            }
            x.unsqueeze(2)?
                .broadcast_as((b, kv_h, group, t, head_dim))?
                .contiguous()?
                .reshape((b, h, t, head_dim))
        };

        let mut x = self
            .embed_tokens
            .as_tensor()
            .index_select(&tokens.flatten_all()?, 0)?; // [n, d]
        for layer in &self.layers {
            let xn = rmsnorm(&x, &layer.input_layernorm, eps)?;
            let q = match &layer.query {
                QueryParams::Dense { q_proj } => linear(&xn, q_proj)?,
                QueryParams::Identity => xn.clone(),
                QueryParams::ResidualMlp { q_down, q_up } => {
                    (&xn + linear(&linear(&xn, q_down)?.silu()?, q_up)?)?
                }
            };
            let k = linear(&xn, &layer.k_proj)?;
            let v = repeat_kv(heads(&linear(&xn, &layer.v_proj)?, kv_h)?)?;
            let q = rope(&heads(&q, h)?, &cos, &sin)?;
            let k = repeat_kv(rope(&heads(&k, kv_h)?, &cos, &sin)?)?;

            // causal attention per head: [b, h, t, t] scores, [b, h, t, head_dim] output
            let scores =
                (q.matmul(&k.t()?)? * (1.0 / (head_dim as f64).sqrt()))?.broadcast_add(&mask)?;
            let att = softmax(&scores)?;
            let a = att
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((n, d))?;

            let o = match &layer.output {
                OutputParams::Dense { o_proj } => linear(&a, o_proj)?,
                OutputParams::Hadamard {
                    o_scale,
                    o_bias,
                    matrix,
                } => {
                    // H is symmetric, so the row-vector product a H is the engine's H a.
                    a.matmul(matrix)?
                        .broadcast_mul(o_scale.as_tensor())?
                        .broadcast_add(o_bias.as_tensor())?
                }
            };
            x = (x + o)?;

            let xn = rmsnorm(&x, &layer.post_attention_layernorm, eps)?;
            let gate = linear(&xn, &layer.gate_proj)?.silu()?;
            let up = linear(&xn, &layer.up_proj)?;
            x = (x + linear(&(gate * up)?, &layer.down_proj)?)?;
        }
        let xn = rmsnorm(&x, &self.norm, eps)?;
        let logits = linear(&xn, &self.lm_head)?; // [n, vocab]
        Ok(logits.reshape((b, t, c.vocab_size))?)
    }

    /// Mean cross-entropy (nats per token) of predicting `targets` [batch, seq] from
    /// `inputs` [batch, seq]; a scalar tensor that backpropagates to every parameter.
    pub fn loss(&self, inputs: &Tensor, targets: &Tensor) -> Result<Tensor, TrainError> {
        let logits = self.forward(inputs)?;
        let vocab = self.config.vocab_size;
        let n = targets.elem_count();
        // log_softmax is max-shifted plain ops: its backward pass is complete.
        let logp = candle_nn::ops::log_softmax(&logits.reshape((n, vocab))?, D::Minus1)?;
        let picked = logp.gather(&targets.reshape((n, 1))?, 1)?; // [n, 1]
        Ok(picked.mean_all()?.neg()?)
    }

    /// The current values, in expected_tensors order, as f32.
    pub fn export_tensors(&self) -> Result<NamedTensors, TrainError> {
        self.params
            .iter()
            .map(|p| {
                let t = p.var.as_tensor();
                let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                Ok((p.name.clone(), t.dims().to_vec(), values))
            })
            .collect()
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` for walsh.
    pub fn export(&self, dir: &Path, format: WeightFormat) -> Result<(), TrainError> {
        write_model(dir, &self.config, &self.export_tensors()?, format)?;
        Ok(())
    }
}

/// x [n, in] -> x w^T [n, out], w in HF layout [out, in].
fn linear(x: &Tensor, w: &Var) -> candle_core::Result<Tensor> {
    x.matmul(&w.as_tensor().t()?)
}

/// x / sqrt(mean(x^2) + eps) * weight over the last dimension, in plain ops: candle's
/// fused rms_norm has no backward pass.
fn rmsnorm(x: &Tensor, weight: &Var, eps: f64) -> candle_core::Result<Tensor> {
    let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(weight.as_tensor())
}

/// Max-shifted softmax over the last dimension from plain ops (candle_nn::ops::softmax),
/// not softmax_last_dim, whose backward pass is missing.
fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::softmax(x, D::Minus1)
}

/// Rotates x [b, h, t, head_dim], pairing element i with i + head_dim / 2 (HF
/// rotate_half), with cos/sin [t, head_dim / 2]: the engine's formula, element for element.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let lo = x.narrow(D::Minus1, 0, half)?;
    let hi = x.narrow(D::Minus1, half, half)?;
    let new_lo = (lo.broadcast_mul(cos)? - hi.broadcast_mul(sin)?)?;
    let new_hi = (hi.broadcast_mul(cos)? + lo.broadcast_mul(sin)?)?;
    Tensor::cat(&[new_lo, new_hi], D::Minus1)
}
