"""Tiny random text-to-image (and text-to-video) pipelines of the newer families, complete with text encoders, VAEs
and tokenizers built offline (a character vocabulary: no download), to be saved with `save_pretrained` and loaded
again through `fora.loading.load_pipeline`, the path a hub checkpoint takes."""

import json
import os
import tempfile

import families
import torch

CHARS = "abcdefghijklmnopqrstuvwxyz"


def clip_tokenizer():
    """A CLIP BPE tokenizer over single characters (no merges)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in CHARS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=77)


def t5_tokenizer():
    """A T5 unigram tokenizer over single characters."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)] + [(c, -2.0) for c in CHARS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def clip_encoder(hidden: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=2 + 2 * len(CHARS),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        projection_dim=hidden,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def t5_encoder(d_model: int, umt5: bool = False):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = config_cls(
        vocab_size=4 + len(CHARS), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1, num_heads=2
    )
    return model_cls(config).eval()


def kl_vae(latent_channels: int, **config):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=latent_channels,
        **config,
    ).eval()


def sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    # the family test's transformer: T5's width 16 is its joint_attention_dim (the two CLIP encoders' 4 + 4 are
    # padded to it), the two CLIP projections concatenated its pooled_projection_dim 8
    return StableDiffusion3Pipeline(
        transformer=families.sd3()[0],
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=kl_vae(4, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=clip_encoder(4, projection=True),
        tokenizer=clip_tokenizer(),
        text_encoder_2=clip_encoder(4, projection=True),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_encoder(16),
        tokenizer_3=t5_tokenizer(),
    )


def flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=kl_vae(4, shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=clip_encoder(8, projection=False),  # its pooled output: pooled_projection_dim 8
        tokenizer=clip_tokenizer(),
        text_encoder_2=t5_encoder(16),  # joint_attention_dim 16
        tokenizer_2=t5_tokenizer(),
        transformer=families.flux(in_channels=16)[0],  # 4 latent channels, packed 2 x 2
    )


def sana():
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline
    from transformers import Gemma2Config, Gemma2Model, GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "\u2581": 5}
    vocab.update({c: 6 + i for i, c in enumerate(CHARS)})
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[])
    text_encoder = Gemma2Model(
        Gemma2Config(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            pad_token_id=0,
        )
    ).eval()
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    ).eval()
    transformer = families.sana()[0]  # caption_channels 16: Gemma's width
    return SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def wan():
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    transformer = families.wan()[0]  # text_dim 16: UMT5's width
    vae = AutoencoderKLWan(
        base_dim=4,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    ).eval()
    return WanPipeline(
        tokenizer=t5_tokenizer(),
        text_encoder=t5_encoder(16, umt5=True),
        vae=vae,
        transformer=transformer,
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
    )


# family -> builder of a whole tiny pipeline, and the arguments of one small call
PIPELINES = {
    "sd3": (sd3, {"height": 32, "width": 32, "guidance_scale": 4.0}),
    "flux": (flux, {"height": 32, "width": 32, "guidance_scale": 3.5, "max_sequence_length": 32}),
    "sana": (sana, {"height": 32, "width": 32, "guidance_scale": 4.5, "use_resolution_binning": False}),
    "wan": (wan, {"height": 16, "width": 16, "num_frames": 5, "guidance_scale": 5.0}),
}


def build(family: str):
    torch.manual_seed(0)
    pipe = PIPELINES[family][0]()
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # as from_pretrained leaves them
    pipe.set_progress_bar_config(disable=True)
    return pipe
