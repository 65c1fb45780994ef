//! Every rename table in one place. The model code uses Hugging Face names throughout
//! (`vision_model.*`, `qformer.*`, `query_tokens`, `model.layers.*`); files that use other names
//! (LAVIS/MiniGPT-4 `.pth`, llama.cpp GGUF) are read through these tables.

/// LAVIS / MiniGPT-4 name → Hugging Face name. `None` means the tensor is not used by inference
/// (the Q-Former's text branch, optimizer leftovers, the LLM copy inside a MiniGPT-4 checkpoint…).
///
/// Accepts the bare EVA names of `eva_vit_g.pth` as well as the `visual_encoder.`-prefixed ones.
pub fn lavis_to_hf(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("ln_vision.") {
        return Some(format!("vision_model.post_layernorm.{rest}"));
    }
    if name == "query_tokens" || name.starts_with("llama_proj.") {
        return Some(name.to_string());
    }
    if let Some(rest) = name.strip_prefix("Qformer.bert.") {
        return qformer_to_hf(rest);
    }
    eva_to_hf(name.strip_prefix("visual_encoder.").unwrap_or(name))
}

fn eva_to_hf(name: &str) -> Option<String> {
    let embed = |s: &str| Some(format!("vision_model.embeddings.{s}"));
    match name {
        "cls_token" => return embed("class_embedding"),
        "pos_embed" => return embed("position_embedding"),
        _ => {}
    }
    if let Some(rest) = name.strip_prefix("patch_embed.proj.") {
        return embed(&format!("patch_embedding.{rest}"));
    }
    let rest = name.strip_prefix("blocks.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let mapped = if let Some(r) = rest.strip_prefix("norm1.") {
        format!("layer_norm1.{r}")
    } else if let Some(r) = rest.strip_prefix("norm2.") {
        format!("layer_norm2.{r}")
    } else if let Some(r) = rest.strip_prefix("attn.proj.") {
        format!("self_attn.projection.{r}")
    } else if let Some(r) = rest.strip_prefix("attn.") {
        // qkv.weight, q_bias, v_bias keep their names.
        format!("self_attn.{r}")
    } else if rest.starts_with("mlp.fc1.") || rest.starts_with("mlp.fc2.") {
        rest.to_string()
    } else {
        return None;
    };
    Some(format!("vision_model.encoder.layers.{layer}.{mapped}"))
}

fn qformer_to_hf(rest: &str) -> Option<String> {
    if let Some(r) = rest.strip_prefix("embeddings.LayerNorm.") {
        return Some(format!("qformer.layernorm.{r}"));
    }
    let r = rest.strip_prefix("encoder.layer.")?;
    let (layer, r) = r.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let mapped = if let Some(x) = r.strip_prefix("attention.self.") {
        format!("attention.attention.{x}")
    } else if let Some(x) = r.strip_prefix("crossattention.self.") {
        format!("crossattention.attention.{x}")
    } else if r.starts_with("attention.output.")
        || r.starts_with("crossattention.output.")
        || r.starts_with("intermediate_query.")
        || r.starts_with("output_query.")
    {
        r.to_string()
    } else {
        // The text branch (`intermediate.`, `output.`) is never run by MiniGPT-4.
        return None;
    };
    Some(format!("qformer.encoder.layer.{layer}.{mapped}"))
}

/// llama.cpp's names for LLaMA's whole-model tensors, (GGUF, Hugging Face).
const GGUF_TOP: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// llama.cpp's names for the parts of block `i`, (GGUF `blk.{i}.…`, Hugging Face
/// `model.layers.{i}.…`); both directions read this one table.
const GGUF_BLOCK: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// llama.cpp GGUF name → Hugging Face `LlamaForCausalLM` name.
pub fn gguf_to_hf(name: &str) -> Option<String> {
    if let Some((_, hf)) = GGUF_TOP.iter().find(|(g, _)| *g == name) {
        return Some(hf.to_string());
    }
    let (layer, r) = name.strip_prefix("blk.")?.split_once('.')?;
    layer.parse::<usize>().ok()?;
    // GGUF part names hold no dot: the first one ends the part.
    let (part, suffix) = r.split_once('.')?;
    let (_, hf) = GGUF_BLOCK.iter().find(|(g, _)| *g == part)?;
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Hugging Face `LlamaForCausalLM` name → llama.cpp GGUF name (the inverse of [`gguf_to_hf`]).
pub fn hf_to_gguf(name: &str) -> Option<String> {
    if let Some((g, _)) = GGUF_TOP.iter().find(|(_, hf)| *hf == name) {
        return Some(g.to_string());
    }
    let (layer, r) = name.strip_prefix("model.layers.")?.split_once('.')?;
    layer.parse::<usize>().ok()?;
    // Hugging Face part names do (`self_attn.q_proj`): the last dot ends the part.
    let (part, suffix) = r.rsplit_once('.')?;
    let (g, _) = GGUF_BLOCK.iter().find(|(_, hf)| *hf == part)?;
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// Hugging Face's q/k rows (each head's rotary pairs split in halves) reordered into llama.cpp's
/// (pairs adjacent): `convert_hf_to_gguf.py`'s `LlamaModel.permute`. A GGUF's q/k matrices are
/// stored this way, so anything added to them (a LoRA update) must be permuted alike.
pub fn permute_for_gguf(w: &candle_core::Tensor, heads: usize) -> crate::Result<candle_core::Tensor> {
    let (rows, cols) = w.dims2()?;
    Ok(w.reshape((heads, 2, rows / heads / 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))?)
}

/// The inverse of [`permute_for_gguf`]: llama.cpp's q/k rows back into Hugging Face's order.
pub fn unpermute_from_gguf(w: &candle_core::Tensor, heads: usize) -> crate::Result<candle_core::Tensor> {
    let (rows, cols) = w.dims2()?;
    Ok(w.reshape((heads, rows / heads / 2, 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lavis_names() {
        let cases = [
            ("visual_encoder.cls_token", Some("vision_model.embeddings.class_embedding")),
            ("pos_embed", Some("vision_model.embeddings.position_embedding")),
            ("patch_embed.proj.weight", Some("vision_model.embeddings.patch_embedding.weight")),
            ("blocks.3.norm1.bias", Some("vision_model.encoder.layers.3.layer_norm1.bias")),
            ("blocks.3.attn.q_bias", Some("vision_model.encoder.layers.3.self_attn.q_bias")),
            ("blocks.3.attn.proj.weight", Some("vision_model.encoder.layers.3.self_attn.projection.weight")),
            ("visual_encoder.blocks.0.mlp.fc2.bias", Some("vision_model.encoder.layers.0.mlp.fc2.bias")),
            ("ln_vision.weight", Some("vision_model.post_layernorm.weight")),
            ("Qformer.bert.embeddings.LayerNorm.weight", Some("qformer.layernorm.weight")),
            (
                "Qformer.bert.encoder.layer.2.crossattention.self.key.weight",
                Some("qformer.encoder.layer.2.crossattention.attention.key.weight"),
            ),
            (
                "Qformer.bert.encoder.layer.1.output_query.LayerNorm.bias",
                Some("qformer.encoder.layer.1.output_query.LayerNorm.bias"),
            ),
            ("Qformer.bert.encoder.layer.1.intermediate.dense.weight", None),
            ("Qformer.bert.embeddings.word_embeddings.weight", None),
            ("Qformer.cls.predictions.bias", None),
            ("llama_model.model.layers.0.mlp.up_proj.weight", None),
            ("llama_proj.weight", Some("llama_proj.weight")),
        ];
        for (lavis, hf) in cases {
            assert_eq!(lavis_to_hf(lavis).as_deref(), hf, "{lavis}");
        }
    }

    #[test]
    fn gguf_names() {
        assert_eq!(gguf_to_hf("blk.12.ffn_gate.weight").unwrap(), "model.layers.12.mlp.gate_proj.weight");
        assert_eq!(gguf_to_hf("output.weight").unwrap(), "lm_head.weight");
        assert_eq!(gguf_to_hf("rope_freqs.weight"), None);
    }

    #[test]
    fn gguf_names_round_trip() {
        for hf in [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight",
            "model.layers.3.self_attn.k_proj.weight",
            "model.layers.31.mlp.down_proj.weight",
            "model.layers.0.post_attention_layernorm.weight",
        ] {
            let g = hf_to_gguf(hf).unwrap();
            assert_eq!(gguf_to_hf(&g).as_deref(), Some(hf), "{g}");
        }
        assert_eq!(hf_to_gguf("model.layers.0.self_attn.rotary_emb.inv_freq"), None);
    }
}
