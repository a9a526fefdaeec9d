//! From a Hugging Face `config.json` and tensor names to llama.cpp's GGUF architecture keys and
//! tensor names, as llama.cpp's `convert_hf_to_gguf.py` writes them (`conversion/base.py`
//! `TextModel.set_gguf_parameters`, and `llama.py`, `qwen.py`, `gemma.py`, `phi.py`).

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};

use super::unsupported;
use crate::{Error, Result, Value};

/// The architectures whose checkpoints map onto a GGUF architecture here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Arch {
    /// `LlamaForCausalLM`, `MistralForCausalLM`: Q/K rows permuted for llama.cpp's RoPE pairing.
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
    Phi3,
}

/// The `architectures` values this loader reads, for the error listing them.
const SUPPORTED: &str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, \
                         Qwen3ForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, \
                         Phi3ForCausalLM";

impl Arch {
    pub fn from_hf(name: &str) -> Result<Self> {
        Ok(match name {
            "LlamaForCausalLM" | "MistralForCausalLM" => Arch::Llama,
            "Qwen2ForCausalLM" => Arch::Qwen2,
            "Qwen3ForCausalLM" => Arch::Qwen3,
            "Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration" => Arch::Gemma3,
            "Phi3ForCausalLM" => Arch::Phi3,
            other => {
                return Err(unsupported(format!(
                    "architecture `{other}` (config.json `architectures`) is not supported \
                     (supported: {SUPPORTED})"
                )))
            }
        })
    }

    /// `general.architecture`.
    pub fn gguf(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
            Arch::Phi3 => "phi3",
        }
    }
}

/// `config.json` with a multimodal model's `text_config` lifted to the top, as the converter does.
pub(super) struct Hparams(Map<String, Json>);

impl Hparams {
    pub fn new(config: Json) -> Result<Self> {
        let Json::Object(mut m) = config else {
            return Err(unsupported("config.json is not a JSON object".into()));
        };
        if let Some(Json::Object(text)) = m.get("text_config").cloned() {
            m.extend(text);
        }
        Ok(Hparams(m))
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    /// The first of `keys` present, as an unsigned integer.
    pub fn usize_of(&self, keys: &[&str]) -> Result<Option<usize>> {
        for k in keys {
            if let Some(v) = self.get(k) {
                return v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                    unsupported(format!(
                        "config.json `{k}` = {v} is not an unsigned integer"
                    ))
                });
            }
        }
        Ok(None)
    }

    pub fn usize_req(&self, keys: &[&str]) -> Result<usize> {
        self.usize_of(keys)?
            .ok_or_else(|| unsupported(format!("config.json has no `{}`", keys.join("` or `"))))
    }

    pub fn f64_of(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| unsupported(format!("config.json `{key}` = {v} is not a number"))),
        }
    }

    pub fn bool_of(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Json::as_bool)
    }

    /// `rope_parameters` (new) or `rope_scaling` (old), with the top-level RoPE keys mirrored in
    /// (the converter's `TextModel.__init__`). Per-layer-type maps (`full_attention`,
    /// `sliding_attention`) are kept as they are.
    pub fn rope(&self) -> Map<String, Json> {
        let mut r = match self
            .get("rope_parameters")
            .or_else(|| self.get("rope_scaling"))
        {
            Some(Json::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        if !r.contains_key("full_attention") && !r.contains_key("sliding_attention") {
            let find = |keys: &[&str]| keys.iter().find_map(|k| self.get(k)).cloned();
            if let Some(local) = find(&["local_rope_theta", "rope_local_base_freq"]) {
                r.insert(
                    "sliding_attention".into(),
                    serde_json::json!({ "rope_theta": local }),
                );
            }
            if !r.contains_key("rope_theta") {
                if let Some(t) = find(&["rope_theta", "rotary_emb_base"]) {
                    r.insert("rope_theta".into(), t);
                }
            }
            if !r.contains_key("rope_type") {
                if let Some(t) = r.get("type").cloned() {
                    r.insert("rope_type".into(), t);
                }
            }
            for k in ["partial_rotary_factor", "original_max_position_embeddings"] {
                if !r.contains_key(k) {
                    if let Some(v) = self.get(k) {
                        r.insert(k.into(), v.clone());
                    }
                }
            }
        }
        r
    }
}

/// Metadata and generated tensors (RoPE factors) of one checkpoint.
pub(super) struct ArchMeta {
    pub meta: BTreeMap<String, Value>,
    /// (GGUF name, f32 values), written as F32 1-D tensors.
    pub extra: Vec<(String, Vec<f32>)>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
}

fn f32_of(m: &Map<String, Json>, key: &str) -> Option<f32> {
    m.get(key).and_then(Json::as_f64).map(|v| v as f32)
}

/// The `{arch}.*` keys and RoPE tensors for `hp`; `n_vocab` is the vocabulary the embedding
/// keeps.
pub(super) fn metadata(arch: Arch, hp: &Hparams, n_vocab: usize) -> Result<ArchMeta> {
    let a = arch.gguf();
    let mut meta = BTreeMap::new();
    let mut put = |k: &str, v: Value| {
        meta.insert(format!("{a}.{k}"), v);
    };
    let u32v = |x: usize| Value::U32(x as u32);
    let gemma = arch == Arch::Gemma3;

    let n_layers = hp.usize_req(&["num_hidden_layers", "n_layers", "n_layer"])?;
    let dim = hp.usize_req(&["hidden_size", "n_embd"])?;
    let n_heads = match (gemma, hp.usize_of(&["num_attention_heads", "n_head"])?) {
        (_, Some(n)) => n,
        (true, None) => 8,
        (false, None) => {
            return Err(unsupported(
                "config.json has no `num_attention_heads`".into(),
            ))
        }
    };
    let n_kv_heads = hp
        .usize_of(&["num_key_value_heads", "n_kv_heads"])?
        .unwrap_or(if gemma { 4 } else { n_heads });
    if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(unsupported(format!(
            "{n_heads} attention heads cannot share {n_kv_heads} KV heads"
        )));
    }
    put("block_count", u32v(n_layers));
    put("embedding_length", u32v(dim));
    put(
        "feed_forward_length",
        u32v(hp.usize_req(&["intermediate_size", "n_inner"])?),
    );
    put("attention.head_count", u32v(n_heads));
    put("attention.head_count_kv", u32v(n_kv_heads));
    put("vocab_size", u32v(n_vocab));
    let ctx = hp.usize_of(&["max_position_embeddings", "n_positions", "n_ctx"])?;
    match (ctx, gemma) {
        (Some(c), _) => put("context_length", u32v(c)),
        (None, true) => put("context_length", u32v(131072)),
        (None, false) => {}
    }
    let eps = hp
        .f64_of("rms_norm_eps")?
        .or(gemma.then_some(1e-6))
        .ok_or_else(|| unsupported("config.json has no `rms_norm_eps`".into()))?;
    put("attention.layer_norm_rms_epsilon", Value::F32(eps as f32));
    let head_dim = match hp.usize_of(&["head_dim"])? {
        Some(h) => Some(h),
        None if gemma => Some(256),
        None => None,
    };
    if let Some(h) = head_dim {
        put("attention.key_length", u32v(h));
        put("attention.value_length", u32v(h));
    }

    let rope = hp.rope();
    let full = match rope.get("full_attention") {
        Some(Json::Object(m)) => m.clone(),
        _ => rope.clone(),
    };
    if let Some(theta) = f32_of(&full, "rope_theta").or(gemma.then_some(1e6)) {
        put("rope.freq_base", Value::F32(theta));
    }
    if let Some(local) = rope
        .get("sliding_attention")
        .and_then(|s| s.get("rope_theta"))
        .and_then(Json::as_f64)
    {
        put("rope.freq_base_swa", Value::F32(local as f32));
    }
    let rope_dim_full = head_dim.unwrap_or(dim / n_heads);
    let partial = f32_of(&full, "partial_rotary_factor");
    let rope_dim = match partial {
        Some(p) => (p as f64 * dim as f64) as usize / n_heads,
        None => rope_dim_full,
    };
    if matches!(arch, Arch::Llama | Arch::Phi3) {
        put("rope.dimension_count", u32v(rope_dim));
    } else if partial.is_some_and(|p| p != 1.0) {
        return Err(unsupported(format!(
            "partial_rotary_factor {} on a {a} checkpoint is not supported",
            partial.unwrap_or(1.0)
        )));
    }

    let mut extra = Vec::new();
    let rope_type = full
        .get("rope_type")
        .and_then(Json::as_str)
        .unwrap_or("default")
        .to_ascii_lowercase();
    match rope_type.as_str() {
        "default" => {}
        "linear" => {
            let factor = f32_of(&full, "factor")
                .ok_or_else(|| unsupported("linear rope scaling without a `factor`".into()))?;
            put("rope.scaling.type", Value::String("linear".into()));
            put("rope.scaling.factor", Value::F32(factor));
        }
        "llama3" if arch == Arch::Llama => {
            let base = f32_of(&full, "rope_theta").unwrap_or(10000.0);
            extra.push((
                "rope_freqs.weight".into(),
                llama3_factors(&full, base, rope_dim_full),
            ));
        }
        "longrope" | "su" if arch == Arch::Phi3 => {}
        other => {
            return Err(unsupported(format!(
                "rope scaling `{other}` of a {a} checkpoint is not supported"
            )))
        }
    }

    match arch {
        Arch::Gemma3 => {
            if let Some(cap) = hp.f64_of("final_logit_softcapping")?.filter(|&c| c != 0.0) {
                put("final_logit_softcapping", Value::F32(cap as f32));
            }
            if hp.get("attn_logit_softcapping").is_some() {
                return Err(unsupported(
                    "gemma3 with `attn_logit_softcapping` is not supported".into(),
                ));
            }
            if hp.usize_of(&["sliding_window_pattern"])? != Some(1) {
                put(
                    "attention.sliding_window",
                    u32v(hp.usize_req(&["sliding_window"])?),
                );
            }
        }
        Arch::Phi3 => {
            let orig = rope
                .get("original_max_position_embeddings")
                .and_then(Json::as_u64)
                .ok_or_else(|| {
                    unsupported("phi3 config.json has no `original_max_position_embeddings`".into())
                })?;
            put("rope.scaling.original_context_length", u32v(orig as usize));
            put(
                "attention.sliding_window",
                u32v(hp.usize_of(&["sliding_window"])?.unwrap_or(0)),
            );
            if let Some((attn, long, short)) =
                phi3_longrope(&full, &rope_type, ctx, orig, rope_dim)?
            {
                put("rope.scaling.attn_factor", Value::F32(attn));
                extra.push(("rope_factors_long.weight".into(), long));
                extra.push(("rope_factors_short.weight".into(), short));
            }
        }
        Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => {}
    }
    Ok(ArchMeta {
        meta,
        extra,
        n_heads,
        n_kv_heads,
    })
}

/// Llama 3.1's per-frequency divisors (`LlamaModel.generate_extra_tensors`).
fn llama3_factors(r: &Map<String, Json>, base: f32, dim: usize) -> Vec<f32> {
    let factor = f32_of(r, "factor").unwrap_or(8.0);
    let low = f32_of(r, "low_freq_factor").unwrap_or(1.0);
    let high = f32_of(r, "high_freq_factor").unwrap_or(4.0);
    let old_ctx = f32_of(r, "original_max_position_embeddings").unwrap_or(8192.0);
    let (low_wl, high_wl) = (old_ctx / low, old_ctx / high);
    (0..dim / 2)
        .map(|i| {
            let freq = 1.0 / base.powf((2 * i) as f32 / dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wl {
                1.0
            } else if wavelen > low_wl {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

type LongRope = (f32, Vec<f32>, Vec<f32>);

/// Phi-3's long/short RoPE factors and attention factor (`Phi3MiniModel.generate_extra_tensors`).
fn phi3_longrope(
    r: &Map<String, Json>,
    kind: &str,
    ctx: Option<usize>,
    orig: u64,
    rope_dim: usize,
) -> Result<Option<LongRope>> {
    let list = |k: &str| -> Result<Option<Vec<f32>>> {
        match r.get(k) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_f64()
                        .map(|x| x as f32)
                        .ok_or_else(|| unsupported(format!("rope scaling `{k}` holds {v}")))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(unsupported(format!(
                "rope scaling `{k}` = {v} is not a list"
            ))),
        }
    };
    let Some(long) = list("long_factor")? else {
        return Ok(None);
    };
    let short = list("short_factor")?.ok_or_else(|| {
        unsupported("rope scaling has `long_factor` but no `short_factor`".into())
    })?;
    if long.len() != rope_dim / 2 || short.len() != rope_dim / 2 {
        return Err(unsupported(format!(
            "rope scaling factors must have {} entries; long has {}, short {}",
            rope_dim / 2,
            long.len(),
            short.len()
        )));
    }
    let scale = ctx.unwrap_or(orig as usize) as f64 / orig as f64;
    let attn = match kind {
        "longrope" | "su" if scale > 1.0 => (1.0 + scale.ln() / (orig as f64).ln()).sqrt(),
        "longrope" | "su" => 1.0,
        other => {
            return Err(unsupported(format!(
                "rope scaling `{other}` with long/short factors is not supported"
            )))
        }
    };
    Ok(Some((attn as f32, long, short)))
}

/// What is done to a checkpoint tensor on its way into the GGUF view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Keep,
    /// llama.cpp's `LlamaModel.permute` of the rows: heads of `rows / heads` rows, each head's
    /// two halves interleaved, so that RoPE pairs adjacent rows.
    Permute {
        heads: usize,
    },
    /// Gemma's RMSNorm multiplies by `1 + w`; llama.cpp stores `1 + w`.
    AddOne,
    /// Keep the first `n` rows (Gemma 3's embedding has rows past the vocabulary).
    FirstRows(usize),
}

/// The GGUF name of checkpoint tensor `name` and what to do to it; `None` for tensors a text
/// model does not use (vision tower, `rotary_emb.inv_freq`, a tied `lm_head`).
pub(super) fn map_tensor(
    arch: Arch,
    name: &str,
    m: &ArchMeta,
    tied: bool,
    n_vocab: usize,
) -> Result<Option<(String, Op)>> {
    if name.ends_with("rotary_emb.inv_freq")
        || [
            "vision_tower.",
            "multi_modal_projector.",
            "model.vision_tower.",
            "model.multi_modal_projector.",
        ]
        .iter()
        .any(|p| name.starts_with(p))
    {
        return Ok(None);
    }
    let unknown = || {
        unsupported(format!(
            "tensor `{name}` of a {} checkpoint has no GGUF name",
            arch.gguf()
        ))
    };
    if let Some(view) = kv_scale_name(name) {
        return Ok(Some((view, Op::Keep)));
    }
    let (stem, suffix) = name.rsplit_once('.').ok_or_else(unknown)?;
    if suffix != "weight" && suffix != "bias" {
        return Err(unknown());
    }
    if stem == "lm_head" {
        return Ok((!tied).then(|| ("output.weight".into(), Op::Keep)));
    }
    let stem = ["language_model.model.", "model.language_model.", "model."]
        .iter()
        .find_map(|p| stem.strip_prefix(p))
        .ok_or_else(unknown)?;
    let gemma = arch == Arch::Gemma3;
    let shift = |op: Op| {
        if gemma && stem.ends_with("norm") {
            Op::AddOne
        } else {
            op
        }
    };
    let out = |n: String, op: Op| Ok(Some((format!("{n}.{suffix}"), shift(op))));
    match stem {
        "embed_tokens" => {
            return out(
                "token_embd".into(),
                if gemma {
                    Op::FirstRows(n_vocab)
                } else {
                    Op::Keep
                },
            )
        }
        "norm" => return out("output_norm".into(), Op::Keep),
        _ => {}
    }
    let rest = stem.strip_prefix("layers.").ok_or_else(unknown)?;
    let (bid, part) = rest.split_once('.').ok_or_else(unknown)?;
    let bid: usize = bid.parse().map_err(|_| unknown())?;
    let llama = arch == Arch::Llama;
    let (gguf, op) = match part {
        "self_attn.q_proj" if llama => ("attn_q", Op::Permute { heads: m.n_heads }),
        "self_attn.k_proj" if llama => (
            "attn_k",
            Op::Permute {
                heads: m.n_kv_heads,
            },
        ),
        "self_attn.q_proj" if arch != Arch::Phi3 => ("attn_q", Op::Keep),
        "self_attn.k_proj" if arch != Arch::Phi3 => ("attn_k", Op::Keep),
        "self_attn.v_proj" if arch != Arch::Phi3 => ("attn_v", Op::Keep),
        "self_attn.qkv_proj" if arch == Arch::Phi3 => ("attn_qkv", Op::Keep),
        "self_attn.o_proj" => ("attn_output", Op::Keep),
        "self_attn.q_norm" if matches!(arch, Arch::Qwen3 | Arch::Gemma3) => {
            ("attn_q_norm", Op::Keep)
        }
        "self_attn.k_norm" if matches!(arch, Arch::Qwen3 | Arch::Gemma3) => {
            ("attn_k_norm", Op::Keep)
        }
        "mlp.gate_proj" if arch != Arch::Phi3 => ("ffn_gate", Op::Keep),
        "mlp.up_proj" if arch != Arch::Phi3 => ("ffn_up", Op::Keep),
        "mlp.gate_up_proj" if arch == Arch::Phi3 => ("ffn_up", Op::Keep),
        "mlp.down_proj" => ("ffn_down", Op::Keep),
        "input_layernorm" => ("attn_norm", Op::Keep),
        "post_attention_layernorm" if gemma => ("post_attention_norm", Op::Keep),
        "post_attention_layernorm" => ("ffn_norm", Op::Keep),
        "pre_feedforward_layernorm" if gemma => ("ffn_norm", Op::Keep),
        "post_feedforward_layernorm" if gemma => ("post_ffw_norm", Op::Keep),
        _ => return Err(unknown()),
    };
    out(format!("blk.{bid}.{gguf}"), op)
}

/// The view's name of an FP8 KV cache's calibrated scale of layer i (`blk.{i}.attn_k_scale`,
/// `blk.{i}.attn_v_scale`: one value, `stored code x scale = K or V`), from vLLM's checkpoint
/// names: `...layers.{i}.self_attn.k_scale` (compressed-tensors, llm-compressor) or
/// `...layers.{i}.self_attn.k_proj.k_scale` (ModelOpt), v likewise. The deprecated single
/// `kv_scale` is not one of them (an unknown tensor).
fn kv_scale_name(name: &str) -> Option<String> {
    let (stem, which) = name.rsplit_once('.')?;
    let kv = match which {
        "k_scale" => "k",
        "v_scale" => "v",
        _ => return None,
    };
    let stem = stem.strip_suffix(&format!(".{kv}_proj")).unwrap_or(stem);
    let (_, bid) = stem.strip_suffix(".self_attn")?.rsplit_once(".layers.")?;
    let bid: usize = bid.parse().ok()?;
    Some(format!("blk.{bid}.attn_{kv}_scale"))
}

/// Names the wrong type of a JSON value in an error.
pub(super) fn json_err(file: &str, key: &str, v: &Json) -> Error {
    unsupported(format!("{file} `{key}` = {v} has an unexpected type"))
}
