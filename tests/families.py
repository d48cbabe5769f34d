"""Tiny random transformers of each family FORA supports, with the inputs of one bare forward call: what
`tests/test_families.py` runs (no download; each builds in milliseconds from a small config)."""

import torch

B = 2  # batch
TEXT = 5  # text tokens


def _text(dim: int = 16) -> torch.Tensor:
    return torch.randn(B, TEXT, dim)


def sd3(dual: bool = False):
    from diffusers import SD3Transformer2DModel

    extra = {"dual_attention_layers": (0,), "qk_norm": "rms_norm"} if dual else {}
    model = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=3,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=8,
        out_channels=4,
        **extra,
    )
    inputs = {
        "hidden_states": torch.randn(B, 4, 8, 8),
        "encoder_hidden_states": _text(),
        "pooled_projections": torch.randn(B, 8),
    }
    return model, inputs


def wan():
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        text_dim=16,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
    )
    return model, {"hidden_states": torch.randn(B, 4, 2, 8, 8), "encoder_hidden_states": _text()}


def lumina2():
    from diffusers import Lumina2Transformer2DModel

    model = Lumina2Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        hidden_size=16,
        num_layers=2,
        num_refiner_layers=1,
        num_attention_heads=2,
        num_kv_heads=1,
        multiple_of=8,
        axes_dim_rope=(4, 2, 2),
        axes_lens=(32, 32, 32),
        cap_feat_dim=16,
    )
    inputs = {
        "hidden_states": torch.randn(B, 4, 8, 8),
        "encoder_hidden_states": _text(),
        "encoder_attention_mask": torch.ones(B, TEXT, dtype=torch.bool),
    }
    return model, inputs


def qwen_image():
    from diffusers import QwenImageTransformer2DModel

    model = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        axes_dims_rope=(2, 2, 4),
    )
    inputs = {
        "hidden_states": torch.randn(B, 16, 16),
        "encoder_hidden_states": _text(),
        "encoder_hidden_states_mask": torch.ones(B, TEXT),
        "img_shapes": [[(1, 4, 4)]] * B,
    }
    return model, inputs


def sana():
    from diffusers import SanaTransformer2DModel

    model = SanaTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=2,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=16,
        sample_size=8,
        patch_size=1,
    )
    return model, {"hidden_states": torch.randn(B, 4, 8, 8), "encoder_hidden_states": _text()}


def pixart_sigma():
    from diffusers import PixArtTransformer2DModel

    model = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_channels=16,
        in_channels=4,
        cross_attention_dim=16,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        use_additional_conditions=False,
    )
    inputs = {
        "hidden_states": torch.randn(B, 4, 8, 8),
        "encoder_hidden_states": _text(),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }
    return model, inputs


def hunyuan_dit():
    from diffusers import HunyuanDiT2DModel
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    model = HunyuanDiT2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=4,
        attention_head_dim=8,
        num_attention_heads=2,
        cross_attention_dim=16,
        cross_attention_dim_t5=16,
        pooled_projection_dim=8,
        hidden_size=16,
        text_len=TEXT,
        text_len_t5=TEXT,
    )
    rope = get_2d_rotary_pos_embed(8, ((0, 0), (4, 4)), (4, 4))
    inputs = {
        "hidden_states": torch.randn(B, 4, 8, 8),
        "encoder_hidden_states": _text(),
        "text_embedding_mask": torch.ones(B, TEXT),
        "encoder_hidden_states_t5": _text(),
        "text_embedding_mask_t5": torch.ones(B, TEXT),
        "image_meta_size": torch.zeros(B, 6),
        "style": torch.zeros(B, dtype=torch.long),
        "image_rotary_emb": rope,
    }
    return model, inputs


def flux(in_channels: int = 4):
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        pooled_projection_dim=8,
        axes_dims_rope=(2, 2, 4),
    )
    inputs = {
        "hidden_states": torch.randn(B, 16, 4),
        "encoder_hidden_states": _text(),
        "pooled_projections": torch.randn(B, 8),
        "txt_ids": torch.zeros(TEXT, 3),
        "img_ids": torch.zeros(16, 3),
    }
    return model, inputs


def flux2():
    from diffusers import Flux2Transformer2DModel

    model = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        timestep_guidance_channels=16,
        axes_dims_rope=(2, 2, 2, 2),
        guidance_embeds=False,
    )
    inputs = {
        "hidden_states": torch.randn(B, 16, 4),
        "encoder_hidden_states": _text(),
        "txt_ids": torch.zeros(B, TEXT, 4),
        "img_ids": torch.zeros(B, 16, 4),
    }
    return model, inputs


# family -> (builder, the block children an independent reference replaces on reuse steps, as written in the docs;
# a dict where the family's block classes differ)
FAMILIES = {
    "flux": (
        flux,
        {"FluxTransformerBlock": ("attn", "ff", "ff_context"), "FluxSingleTransformerBlock": ("proj_out",)},
    ),
    "flux2": (
        flux2,
        {"Flux2TransformerBlock": ("attn", "ff", "ff_context"), "Flux2SingleTransformerBlock": ("attn",)},
    ),
    "sd3": (sd3, ("attn", "ff", "ff_context")),
    "sd3.5": (lambda: sd3(dual=True), ("attn", "attn2", "ff", "ff_context")),
    "wan": (wan, ("attn1", "attn2", "ffn")),
    "lumina2": (lumina2, ("attn", "feed_forward")),
    "qwen-image": (qwen_image, ("attn", "img_mlp", "txt_mlp")),
    "sana": (sana, ("attn1", "attn2", "ff")),
    "pixart-sigma": (pixart_sigma, ("attn1", "attn2", "ff")),
    "hunyuan-dit": (hunyuan_dit, ("attn1", "attn2", "ff")),
}


def _guided_pipeline(family: str, model):
    """A real diffusers pipeline around `model` that runs guidance as separate transformer calls, with the
    keyword arguments of one such call (embeddings given, so no text encoder; latents out, so no VAE)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        Lumina2Pipeline,
        QwenImagePipeline,
        StableDiffusion3Pipeline,
        UniPCMultistepScheduler,
        WanPipeline,
    )

    flow = FlowMatchEulerDiscreteScheduler()

    def embeds(dim=16, **extra):
        return {
            "prompt_embeds": torch.randn(1, TEXT, dim),
            "negative_prompt_embeds": torch.randn(1, TEXT, dim),
            **extra,
        }

    if family == "flux":  # true CFG: calls in cache contexts "cond" and "uncond"
        pipe = FluxPipeline(flow, None, None, None, None, None, model)
        pooled = {"pooled_prompt_embeds": torch.randn(1, 8), "negative_pooled_prompt_embeds": torch.randn(1, 8)}
        kwargs = {**embeds(**pooled), "true_cfg_scale": 4.0, "height": 32, "width": 32}
    elif family == "qwen-image":  # true CFG, "cond" / "uncond"
        pipe = QwenImagePipeline(flow, None, None, None, model)
        masks = {"prompt_embeds_mask": torch.ones(1, TEXT), "negative_prompt_embeds_mask": torch.ones(1, TEXT)}
        kwargs = {**embeds(**masks), "true_cfg_scale": 4.0, "height": 32, "width": 32}
    elif family == "wan":  # CFG, "cond" / "uncond"
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
        pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, transformer=model)
        kwargs = {**embeds(), "guidance_scale": 5.0, "height": 16, "width": 16, "num_frames": 5}
    elif family == "lumina2":  # CFG as two calls in no named context, on the first steps only
        pipe = Lumina2Pipeline(model, flow, None, None, None)
        masks = {
            "prompt_attention_mask": torch.ones(1, TEXT, dtype=torch.bool),
            "negative_prompt_attention_mask": torch.ones(1, TEXT, dtype=torch.bool),
        }
        # the model card's CFG truncation: the unconditional call stops after the first quarter of the steps
        kwargs = {**embeds(**masks), "guidance_scale": 4.0, "height": 16, "width": 16, "cfg_trunc_ratio": 0.25}
    elif family == "sd3":  # CFG batched, plus a skip-layer call (block 1 skipped) on the middle steps only
        pipe = StableDiffusion3Pipeline(model, flow, None, None, None, None, None, None, None)
        pooled = {"pooled_prompt_embeds": torch.randn(1, 8), "negative_pooled_prompt_embeds": torch.randn(1, 8)}
        kwargs = {**embeds(**pooled), "guidance_scale": 4.0, "height": 16, "width": 16}
        kwargs.update(skip_guidance_layers=[1], skip_layer_guidance_start=0.1, skip_layer_guidance_stop=0.6)
    else:
        raise KeyError(family)
    pipe.set_progress_bar_config(disable=True)
    return pipe, {**kwargs, "output_type": "latent"}


# families whose pipelines call the transformer more than once per step: family -> its pipeline and arguments
GUIDED = {
    family: (lambda model, f=family: _guided_pipeline(f, model))
    for family in ("flux", "lumina2", "qwen-image", "sd3", "wan")
}
