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

Each family also declares its :class:`~blockexp.layers.shapes.ParamLayout`: its tensor shapes
from config.json and the defaults of its ``transformers`` config class
(``tests/test_plan_config_only.py`` checks both against what ``transformers`` builds and saves).

Imported by :mod:`blockexp.layers` (its ``__init__``), so every family is registered whenever the
package is imported.
"""

from blockexp.layers.arch import ArchSpec, register_arch
from blockexp.layers.shapes import ParamLayout


def _sizes(vocab: int, hidden: int, intermediate: int, heads: int, **more) -> dict:
    """A config class's defaults: the sizes of its default model, then other fields."""
    sizes = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate)
    return {**sizes, "num_attention_heads": heads, **more}


_GEMMA = dict(head_dim=256, tie_word_embeddings=True, attention_bias=False)
_QWEN_MOE = dict(decoder_sparse_step=1, mlp_only_layers=[])
_ATTENTION_BIAS = dict(qkv_bias="attention_bias", o_bias="attention_bias")

# Llama-family layout: pre-norm blocks, bias-free o_proj/down_proj (biases handled if present).
# Llama-3.x rope scaling lives in the config and tied embeddings in the LM head: nothing per layer.
register_arch(
    ArchSpec(
        "llama",
        shapes=ParamLayout(
            _sizes(32000, 4096, 11008, 32, attention_bias=False, mlp_bias=False),
            mlp_bias="mlp_bias",
            **_ATTENTION_BIAS,
        ),
    )
)
# Mistral: the Llama layout; its sliding window is one global setting (no per-layer field).
register_arch(
    ArchSpec("mistral", shapes=ParamLayout(_sizes(32000, 4096, 14336, 32, num_key_value_heads=8)))
)
# Qwen2: the Llama layout with q/k/v biases (o_proj has none); per-layer ``layer_types`` and the
# full/sliding boundary ``max_window_layers``.
register_arch(
    ArchSpec(
        "qwen2",
        layer_count_boundaries=("max_window_layers",),
        shapes=ParamLayout(_sizes(151936, 4096, 22016, 32, num_key_value_heads=32), qkv_bias=True),
    )
)
# Per-head q/k RMSNorms inside attention (Qwen3, Qwen3-MoE, Gemma 3, OLMo 2).
_QK_NORMS = ("self_attn.q_norm", "self_attn.k_norm")
_QWEN3_NORMS = ("input_layernorm", "post_attention_layernorm", *_QK_NORMS)
# Qwen3: Qwen2's config fields, no q/k/v biases, per-head q/k RMSNorms inside attention.
register_arch(
    ArchSpec(
        "qwen3",
        layer_norms=_QWEN3_NORMS,
        layer_count_boundaries=("max_window_layers",),
        shapes=ParamLayout(
            _sizes(
                151936, 4096, 22016, 32, num_key_value_heads=32, head_dim=128, attention_bias=False
            ),
            **_ATTENTION_BIAS,
        ),
    )
)
# Phi-3: fused qkv_proj and gate_up_proj; the writers are o_proj and down_proj as in Llama.
register_arch(
    ArchSpec(
        "phi3",
        shapes=ParamLayout(_sizes(32064, 3072, 8192, 32), fused_qkv=True, fused_gate_up=True),
    )
)
# Gemma: the Llama layout with (1 + w) RMSNorm and scaled embeddings (both outside the writers).
register_arch(
    ArchSpec(
        "gemma",
        shapes=ParamLayout(
            _sizes(256000, 3072, 24576, 16, num_key_value_heads=16, **_GEMMA), **_ATTENTION_BIAS
        ),
    )
)
_GEMMA2_NORMS = (
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)
# Gemma 2: norms after attention and FFN too (RMSNorm(0) = 0, so zeroed writers still give an
# identity); alternating sliding/global attention in ``layer_types``.
register_arch(
    ArchSpec(
        "gemma2",
        layer_norms=_GEMMA2_NORMS,
        shapes=ParamLayout(
            _sizes(256000, 2304, 9216, 8, num_key_value_heads=4, **_GEMMA), **_ATTENTION_BIAS
        ),
    )
)
# Gemma 3 text models: Gemma 2's layout plus q/k norms; ``layer_types`` (its rope per type).
register_arch(
    ArchSpec(
        "gemma3_text",
        layer_norms=(*_GEMMA2_NORMS, *_QK_NORMS),
        shapes=ParamLayout(
            _sizes(262208, 2304, 9216, 8, num_key_value_heads=4, **_GEMMA), **_ATTENTION_BIAS
        ),
    )
)
# OLMo 2: post-norm blocks, x + norm(attn(x)) and x + norm(mlp(x)); q/k norms over all heads.
register_arch(
    ArchSpec(
        "olmo2",
        layer_norms=(
            "post_attention_layernorm",
            "post_feedforward_layernorm",
            *_QK_NORMS,
        ),
        shapes=ParamLayout(
            _sizes(50304, 4096, 11008, 32, attention_bias=False),
            qk_norm_all_heads=True,
            **_ATTENTION_BIAS,
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
        shapes=ParamLayout(
            _sizes(32000, 4096, 14336, 32, num_key_value_heads=8, num_local_experts=8),
            num_experts="num_local_experts",
            moe_path="block_sparse_moe",
            expert_projections=("w1", "w3", "w2"),
            expert_size="intermediate_size",
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
        shapes=ParamLayout(
            _sizes(
                151936,
                2048,
                5632,
                16,
                num_key_value_heads=16,
                qkv_bias=True,
                num_experts=60,
                moe_intermediate_size=1408,
                shared_expert_intermediate_size=5632,
                **_QWEN_MOE,
            ),
            qkv_bias="qkv_bias",
            num_experts="num_experts",
            shared_expert="shared_expert_intermediate_size",
        ),
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
        shapes=ParamLayout(
            _sizes(
                151936,
                2048,
                6144,
                32,
                num_key_value_heads=4,
                attention_bias=False,
                num_experts=128,
                moe_intermediate_size=768,
                **_QWEN_MOE,
            ),
            num_experts="num_experts",
            **_ATTENTION_BIAS,
        ),
    )
)
