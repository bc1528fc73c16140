//! `config.json`: Hugging Face llama key names plus walsh's variant keys.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ModelError;
use crate::blocks::{self, QuantFormat};
use crate::ops::hadamard::WhtSize;

/// How attention heads are mixed back into the residual stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttnOutput {
    /// `o_proj(a)`: a dense d x d matrix.
    #[default]
    Dense,
    /// `o_scale * WHT(a) / sqrt(d) + o_bias`: no matrix, 2d parameters.
    Hadamard,
}

/// How the attention query is formed from the normalized input `xn`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    /// `q_proj(xn)`.
    #[default]
    Dense,
    /// `q = xn`.
    Identity,
    /// `q = xn + q_up(silu(q_down(xn)))`.
    ResidualMlp,
}

/// Block-quantized matrices in the weights file (docs/model-format.md#quantized-blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    /// `q8` or `q4`.
    pub weights: QuantFormat,
    /// Values per block along a row: walsh reads [`blocks::BLOCK`].
    pub block_size: usize,
}

impl Quantization {
    pub fn new(weights: QuantFormat) -> Self {
        Quantization {
            weights,
            block_size: blocks::BLOCK,
        }
    }
}

/// The largest sizes a config may give: far from overflowing the kernels' u32 indices.
pub const MAX_HIDDEN_SIZE: usize = 1 << 15;
pub const MAX_LAYERS: usize = 1 << 10;
pub const MAX_INTERMEDIATE_SIZE: usize = 1 << 17;
pub const MAX_VOCAB_SIZE: usize = 1 << 20;
pub const MAX_CONTEXT: usize = 1 << 20;

fn default_eps() -> f64 {
    1e-5
}

fn default_theta() -> f64 {
    10000.0
}

/// The model hyperparameters (docs/model-format.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention): query head h reads KV head
    /// h / (num_attention_heads / num_key_value_heads). Absent: num_attention_heads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attn_output: AttnOutput,
    #[serde(default)]
    pub query: Query,
    /// Hidden width of the residual query MLP; default hidden_size / 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_mlp_hidden: Option<usize>,
    /// Some matrices stored block-quantized (`<name>.qweight` + `<name>.scales`); none:
    /// every tensor is F32 or F16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
}

/// The shipped models' sizes (d_model 256, 4 layers, 8 heads, FFN 688, bytes, context 128)
/// with every optional key at the value a config file that omits it gets (dense output
/// projection and query, eps 1e-5, RoPE theta 10000, untied): what a struct literal
/// completes with `..Default::default()`.
impl Default for Config {
    fn default() -> Self {
        Config {
            hidden_size: 256,
            num_hidden_layers: 4,
            num_attention_heads: 8,
            num_key_value_heads: None,
            intermediate_size: 688,
            vocab_size: 256,
            max_position_embeddings: 128,
            rms_norm_eps: default_eps(),
            rope_theta: default_theta(),
            tie_word_embeddings: false,
            attn_output: AttnOutput::default(),
            query: Query::default(),
            query_mlp_hidden: None,
            quantization: None,
        }
    }
}

impl Config {
    /// hidden_size / num_attention_heads (0 for a config with no heads, which
    /// [`Config::validate`] refuses).
    pub fn head_dim(&self) -> usize {
        self.hidden_size
            .checked_div(self.num_attention_heads)
            .unwrap_or(0)
    }

    /// Key/value heads: `num_key_value_heads`, or every query head when absent.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of a key (or value) row: kv_heads * head_dim.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads() * self.head_dim()
    }

    pub fn query_mlp_hidden(&self) -> usize {
        self.query_mlp_hidden.unwrap_or(self.hidden_size / 2)
    }

    /// A short name of the variant, e.g. `hadamard/identity`.
    pub fn variant(&self) -> String {
        let o = match self.attn_output {
            AttnOutput::Dense => "dense",
            AttnOutput::Hadamard => "hadamard",
        };
        let q = match self.query {
            Query::Dense => "dense",
            Query::Identity => "identity",
            Query::ResidualMlp => "residual_mlp",
        };
        format!("{o}/{q}")
    }

    /// Reads and validates `path` (at most [`crate::limits::MAX_CONFIG_BYTES`]).
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = crate::limits::read_at_most(path, crate::limits::MAX_CONFIG_BYTES, "a config")
            .map_err(|source| ModelError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_json_bytes(path, &bytes)
    }

    /// [`Config::from_json`] of bytes that must be UTF-8.
    pub fn from_json_bytes(path: &Path, bytes: &[u8]) -> Result<Self, ModelError> {
        let text = std::str::from_utf8(bytes).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: format!("not UTF-8 text: {e}"),
        })?;
        Self::from_json(path, text)
    }

    /// Parses and validates the text of a config file; `path` names it in messages.
    pub fn from_json(path: &Path, text: &str) -> Result<Self, ModelError> {
        let error = |message: String| ModelError::Config {
            path: path.to_path_buf(),
            message,
        };
        let config: Config = serde_json::from_str(text).map_err(|e| error(e.to_string()))?;
        // The keys the struct ignores: refused where they would change the computation.
        let keys: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| error(e.to_string()))?;
        config.check_unsupported_keys(&keys).map_err(error)?;
        config.validate().map_err(error)?;
        Ok(config)
    }

    /// Refuses Hugging Face keys that change the computation in a way walsh does not
    /// implement, unless they hold the value that changes nothing (`head_dim` equal to
    /// hidden_size / num_attention_heads, `rope_scaling` null, no biases, ...). Every other
    /// key walsh does not read (`architectures`, `torch_dtype`, `bos_token_id`, ...) is
    /// ignored: real config.json files carry many.
    fn check_unsupported_keys(
        &self,
        keys: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), String> {
        use serde_json::Value;
        let head_dim = self.hidden_size.checked_div(self.num_attention_heads);
        let is_null = |v: &Value| v.is_null();
        let is_false = |v: &Value| v == &Value::Bool(false) || v.is_null();
        let is_one = |v: &Value| v.as_f64() == Some(1.0);
        let not_set = |v: &Value| v.is_null() || v.as_f64() == Some(0.0);
        // (key, whether its value is the one walsh computes, what walsh computes)
        type Rule<'a> = (&'a str, &'a dyn Fn(&Value) -> bool, &'a str);
        let rules: [Rule; 11] = [
            (
                "head_dim",
                &|v: &Value| head_dim.is_some_and(|h| v.as_u64() == Some(h as u64)),
                "head_dim = hidden_size / num_attention_heads",
            ),
            ("rope_scaling", &is_null, "unscaled RoPE (null)"),
            ("attention_bias", &is_false, "no attention biases (false)"),
            ("mlp_bias", &is_false, "no MLP biases (false)"),
            ("sliding_window", &is_null, "full causal attention (null)"),
            (
                "use_sliding_window",
                &is_false,
                "full causal attention (false)",
            ),
            (
                "partial_rotary_factor",
                &is_one,
                "RoPE on every dimension (1)",
            ),
            (
                "rope_interleaved",
                &is_false,
                "rotate_half RoPE pairs (i, i + head_dim/2) (false)",
            ),
            (
                "hidden_act",
                &|v: &Value| v.as_str() == Some("silu"),
                "a SiLU MLP (\"silu\")",
            ),
            ("attn_logit_softcapping", &not_set, "no softcapping (null)"),
            ("final_logit_softcapping", &not_set, "no softcapping (null)"),
        ];
        for (key, supported, walsh) in rules {
            if let Some(v) = keys.get(key)
                && !supported(v)
            {
                return Err(format!(
                    "{key} = {v} is not supported: walsh computes only {walsh}"
                ));
            }
        }
        Ok(())
    }

    /// Checks every rule the engine relies on; the message says which one failed.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        // Keep every size far from overflowing u32 indices in the kernels.
        let limits = [
            ("hidden_size", self.hidden_size, MAX_HIDDEN_SIZE),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            (
                "intermediate_size",
                self.intermediate_size,
                MAX_INTERMEDIATE_SIZE,
            ),
            ("vocab_size", self.vocab_size, MAX_VOCAB_SIZE),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                MAX_CONTEXT,
            ),
        ];
        for (name, v, max) in limits {
            if v > max {
                return Err(format!(
                    "{name} = {v} is larger than walsh supports ({max})"
                ));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "num_attention_heads = {} does not divide hidden_size = {}",
                self.num_attention_heads, self.hidden_size
            ));
        }
        if let Some(kv) = self.num_key_value_heads {
            if kv == 0 {
                return Err("num_key_value_heads must be positive".into());
            }
            if !self.num_attention_heads.is_multiple_of(kv) {
                return Err(format!(
                    "num_key_value_heads = {kv} does not divide num_attention_heads = {}",
                    self.num_attention_heads
                ));
            }
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head_dim = {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        if self.attn_output == AttnOutput::Hadamard {
            WhtSize::new(self.hidden_size).map_err(|e| format!("attn_output = hadamard: {e}"))?;
        }
        if self.query == Query::ResidualMlp && self.query_mlp_hidden() == 0 {
            return Err("query_mlp_hidden must be positive".into());
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(format!(
                "rms_norm_eps = {} must be positive",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(format!("rope_theta = {} must be positive", self.rope_theta));
        }
        if let Some(q) = self.quantization
            && q.block_size != blocks::BLOCK
        {
            return Err(format!(
                "quantization.block_size = {} is not supported (walsh reads blocks of {})",
                q.block_size,
                blocks::BLOCK
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        serde_json::from_str(
            r#"{"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 32,
                "attn_output": "hadamard", "query": "residual_mlp"}"#,
        )
        .unwrap()
    }

    #[test]
    fn parses_hf_keys_with_defaults() {
        let c = base();
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert_eq!(c.rope_theta, 10000.0);
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.attn_output, AttnOutput::Hadamard);
        assert_eq!(c.query, Query::ResidualMlp);
        assert_eq!(c.query_mlp_hidden(), 32);
        assert_eq!(c.head_dim(), 16);
        assert_eq!(c.variant(), "hadamard/residual_mlp");
        c.validate().unwrap();
    }

    #[test]
    fn rejects_bad_shapes_with_a_reason() {
        let mut c = base();
        c.num_attention_heads = 5;
        assert!(c.validate().unwrap_err().contains("does not divide"));
        let mut c = base();
        c.hidden_size = 96; // 96 = 12 * 8 is a WHT size, but 96 / 4 = 24 heads: fine
        c.validate().unwrap();
        c.hidden_size = 80; // 80 = 20 * 4: supported too
        c.validate().unwrap();
        c.hidden_size = 36; // 36 = 36 * 1: Paley II over GF(17)
        c.num_attention_heads = 2;
        c.validate().unwrap();
        c.hidden_size = 92; // 92 = 23 * 4: no construction walsh has gives order 92
        let e = c.validate().unwrap_err();
        assert!(
            e.contains("unsupported Walsh") && e.contains("order 92"),
            "{e}"
        );
        let mut c = base();
        c.vocab_size = 0;
        assert!(c.validate().unwrap_err().contains("vocab_size"));
    }

    #[test]
    fn default_is_a_file_with_only_the_required_keys() {
        let text = r#"{"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8,
            "intermediate_size": 688, "vocab_size": 256, "max_position_embeddings": 128}"#;
        let parsed = Config::from_json(Path::new("config.json"), text).unwrap();
        assert_eq!(parsed, Config::default());
    }
    #[test]
    fn kv_heads_default_to_the_heads_and_must_divide_them() {
        let c = base();
        assert_eq!((c.kv_heads(), c.kv_dim()), (4, 64));
        let g = Config {
            num_key_value_heads: Some(2),
            ..base()
        };
        g.validate().unwrap();
        assert_eq!((g.kv_heads(), g.kv_dim(), g.head_dim()), (2, 32, 16));
        let with = |kv| {
            Config {
                num_key_value_heads: Some(kv),
                ..base()
            }
            .validate()
            .unwrap_err()
        };
        assert_eq!(with(0), "num_key_value_heads must be positive");
        assert_eq!(
            with(3),
            "num_key_value_heads = 3 does not divide num_attention_heads = 4"
        );
        assert!(with(8).contains("num_key_value_heads = 8 does not divide"));
        // Absent from the file: not written back either, so configs round-trip unchanged.
        let json = serde_json::to_string(&base()).unwrap();
        assert!(!json.contains("num_key_value_heads"), "{json}");
        let json = serde_json::to_string(&g).unwrap();
        assert!(json.contains(r#""num_key_value_heads":2"#), "{json}");
    }

    /// SmolLM2-135M's config.json as Hugging Face ships it (vocabulary and all): every key
    /// walsh does not read is harmless here.
    const SMOLLM2: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "attention_bias": false,
        "attention_dropout": 0.0, "bos_token_id": 0, "eos_token_id": 0,
        "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.041666666666666664,
        "intermediate_size": 1536, "is_llama_config": true, "max_position_embeddings": 8192,
        "mlp_bias": false, "model_type": "llama", "num_attention_heads": 9,
        "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": null,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": false,
        "rope_scaling": null, "rope_theta": 100000, "tie_word_embeddings": true,
        "torch_dtype": "bfloat16", "transformers_version": "4.42.3", "use_cache": true,
        "vocab_size": 49152}"#;

    /// TinyLlama-1.1B's, with head_dim (as newer transformers write it), sliding_window
    /// and partial_rotary_factor at their no-op values added.
    const TINYLLAMA: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
        "intermediate_size": 5632, "max_position_embeddings": 2048, "model_type": "llama",
        "num_attention_heads": 32, "num_hidden_layers": 22, "num_key_value_heads": 4,
        "head_dim": 64, "sliding_window": null, "partial_rotary_factor": 1.0,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null,
        "tie_word_embeddings": false, "torch_dtype": "bfloat16",
        "transformers_version": "4.31.0.dev0", "use_cache": true, "vocab_size": 32000}"#;

    #[test]
    fn real_hf_configs_load_with_their_harmless_keys() {
        let path = Path::new("config.json");
        let s = Config::from_json(path, SMOLLM2).unwrap();
        assert_eq!((s.hidden_size, s.num_attention_heads), (576, 9));
        assert_eq!((s.kv_heads(), s.head_dim(), s.kv_dim()), (3, 64, 192));
        assert!(s.tie_word_embeddings);
        assert_eq!(s.rope_theta, 100000.0);
        let t = Config::from_json(path, TINYLLAMA).unwrap();
        assert_eq!((t.kv_heads(), t.head_dim(), t.kv_dim()), (4, 64, 256));
    }

    #[test]
    fn keys_that_change_the_computation_are_refused_by_name() {
        // Each sets one key of SmolLM2's config to a value walsh does not compute; the
        // error names the key and its value.
        let cases = [
            ("head_dim", "128", "head_dim = 128"),
            (
                "rope_scaling",
                r#"{"rope_type": "llama3", "factor": 32.0}"#,
                "rope_scaling = {",
            ),
            ("attention_bias", "true", "attention_bias = true"),
            ("mlp_bias", "true", "mlp_bias = true"),
            ("sliding_window", "4096", "sliding_window = 4096"),
            ("use_sliding_window", "true", "use_sliding_window = true"),
            (
                "partial_rotary_factor",
                "0.5",
                "partial_rotary_factor = 0.5",
            ),
            ("hidden_act", r#""gelu""#, r#"hidden_act = "gelu""#),
            ("rope_interleaved", "true", "rope_interleaved = true"),
            (
                "final_logit_softcapping",
                "30.0",
                "final_logit_softcapping = 30.0",
            ),
        ];
        for (key, value, named) in cases {
            let mut v: serde_json::Value = serde_json::from_str(SMOLLM2).unwrap();
            v[key] = serde_json::from_str(value).unwrap();
            let e = Config::from_json(Path::new("m/config.json"), &v.to_string()).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(named)
                    && msg.contains("not supported")
                    && msg.contains("m/config.json"),
                "{key}: {msg}"
            );
        }
        // The values that change nothing pass: head_dim = d / heads, no window, full RoPE.
        let mut v: serde_json::Value = serde_json::from_str(SMOLLM2).unwrap();
        v["head_dim"] = 64.into();
        v["sliding_window"] = serde_json::Value::Null;
        v["use_sliding_window"] = false.into();
        v["partial_rotary_factor"] = 1.into();
        Config::from_json(Path::new("config.json"), &v.to_string()).unwrap();
    }
}
