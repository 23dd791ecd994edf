"""The supported architectures: one :class:`~blockexp.layers.arch.ArchSpec` per ``model_type``.

Supported (``transformers`` 5.x), each one entry below and one row of the architecture matrix in
``tests/test_arch.py``:

* ``llama`` (incl. Llama-3.x rope scaling and tied embeddings), ``mistral`` (global
  ``sliding_window``), ``qwen2`` and ``qwen3`` (per-layer ``layer_types`` and the count-style
  boundary ``max_window_layers``; Qwen3's q/k norms), ``phi3`` (fused ``qkv_proj`` and
  ``gate_up_proj``; the residual writers are still ``o_proj`` and ``down_proj``);
* ``gemma``, ``gemma2``, ``gemma3_text`` ((1 + w) RMSNorm; Gemma 2/3 add a norm *after* the
  attention and the FFN, which maps a zero output to zero, so zeroing the writers still gives an
  exact identity; per-layer ``layer_types`` for sliding/global attention);
* ``olmo2`` (post-norm blocks: ``x + norm(attn(x))``; again zero in, zero out);
* ``mixtral``, ``qwen2_moe``, ``qwen3_moe`` (sparse MoE FFNs: every expert's down projection,
  fused into one 3-D parameter in memory and stored per expert on disk; Qwen2-MoE's shared
  expert and its sigmoid gate; the router is copied with the block. Qwen-MoE's dense layers,
  ``mlp_only_layers`` and ``decoder_sparse_step``, are rewritten as an explicit list).

Imported by :mod:`blockexp.layers` (its ``__init__``), so every family is registered whenever the
package is imported.
"""

from blockexp.layers.arch import ArchSpec, register_arch

# Llama-family layout: pre-norm blocks, bias-free o_proj/down_proj (biases handled if present).
# Llama-3.x rope scaling lives in the config and tied embeddings in the LM head: nothing per layer.
register_arch(ArchSpec("llama"))
# Mistral: the Llama layout; its sliding window is one global setting (no per-layer field).
register_arch(ArchSpec("mistral"))
# Qwen2: the Llama layout with q/k/v biases (o_proj has none); per-layer ``layer_types`` and the
# full/sliding boundary ``max_window_layers``.
register_arch(ArchSpec("qwen2", layer_count_boundaries=("max_window_layers",)))
# Per-head q/k RMSNorms inside attention (Qwen3, Qwen3-MoE, Gemma 3, OLMo 2).
_QK_NORMS = ("self_attn.q_norm", "self_attn.k_norm")
_QWEN3_NORMS = ("input_layernorm", "post_attention_layernorm", *_QK_NORMS)
# Qwen3: Qwen2's config fields, no q/k/v biases, per-head q/k RMSNorms inside attention.
register_arch(
    ArchSpec(
        "qwen3",
        layer_norms=_QWEN3_NORMS,
        layer_count_boundaries=("max_window_layers",),
    )
)
# Phi-3: fused qkv_proj and gate_up_proj; the writers are o_proj and down_proj as in Llama.
register_arch(ArchSpec("phi3"))
# Gemma: the Llama layout with (1 + w) RMSNorm and scaled embeddings (both outside the writers).
register_arch(ArchSpec("gemma"))
_GEMMA2_NORMS = (
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)
# Gemma 2: norms after attention and FFN too (RMSNorm(0) = 0, so zeroed writers still give an
# identity); alternating sliding/global attention in ``layer_types``.
register_arch(ArchSpec("gemma2", layer_norms=_GEMMA2_NORMS))
# Gemma 3 text models: Gemma 2's layout plus q/k norms; ``layer_types`` (its rope per type).
register_arch(ArchSpec("gemma3_text", layer_norms=(*_GEMMA2_NORMS, *_QK_NORMS)))
# OLMo 2: post-norm blocks, x + norm(attn(x)) and x + norm(mlp(x)); q/k norms over all heads.
register_arch(
    ArchSpec(
        "olmo2",
        layer_norms=(
            "post_attention_layernorm",
            "post_feedforward_layernorm",
            *_QK_NORMS,
        ),
    )
)
# Mixtral: every layer sparse. In memory (transformers 5) the experts' down projections are one
# 3-D parameter ``mlp.experts.down_proj``; checkpoints store ``block_sparse_moe.experts.<e>.w2``.
register_arch(
    ArchSpec(
        "mixtral",
        moe_residual_writers=("self_attn.o_proj", "mlp.experts.down_proj"),
        checkpoint_residual_writers=(
            "self_attn.o_proj",
            "block_sparse_moe.experts.*.w2",
            "mlp.experts.down_proj",
        ),
    )
)
_QWEN_MOE_CHECKPOINT_WRITERS = (
    "self_attn.o_proj",
    "mlp.down_proj",
    "mlp.experts.*.down_proj",
    "mlp.experts.down_proj",
)
# Qwen2-MoE: experts plus a shared expert whose output is scaled by sigmoid(shared_expert_gate);
# the dense layers (``mlp_only_layers``, ``decoder_sparse_step``) are plain MLPs.
register_arch(
    ArchSpec(
        "qwen2_moe",
        moe_residual_writers=(
            "self_attn.o_proj",
            "mlp.experts.down_proj",
            "mlp.shared_expert.down_proj",
            "mlp.shared_expert_gate",
        ),
        checkpoint_residual_writers=(
            *_QWEN_MOE_CHECKPOINT_WRITERS,
            "mlp.shared_expert.down_proj",
            "mlp.shared_expert_gate",
        ),
        layer_count_boundaries=("max_window_layers",),
        dense_layers_list="mlp_only_layers",
        sparse_step="decoder_sparse_step",
    )
)
# Qwen3-MoE: Qwen3 attention (q/k norms), experts without a shared expert, dense layers as above.
register_arch(
    ArchSpec(
        "qwen3_moe",
        moe_residual_writers=("self_attn.o_proj", "mlp.experts.down_proj"),
        checkpoint_residual_writers=_QWEN_MOE_CHECKPOINT_WRITERS,
        layer_norms=_QWEN3_NORMS,
        layer_count_boundaries=("max_window_layers",),
        dense_layers_list="mlp_only_layers",
        sparse_step="decoder_sparse_step",
    )
)
