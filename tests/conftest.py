"""Tiny random diffusers pipelines built on the CPU: never a hub download."""

import contextlib
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with `n` torch threads (the tests run with one), then restore the number there was."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_dit_pipeline(num_layers: int = 3, sample_size: int = 8, seed: int = 0, attention_head_dim: int = 8):
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        sample_size=sample_size,
        num_layers=num_layers,
        patch_size=2,
        attention_head_dim=attention_head_dim,
        num_attention_heads=2,
        in_channels=4,
        out_channels=8,
        num_embeds_ada_norm=1000,  # DiTPipeline's null class is id 1000
    )
    vae = AutoencoderKL(
        block_out_channels=(8,),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=8,
    )
    pipe = DiTPipeline(
        transformer.eval(), vae.eval(), DDIMScheduler(), id2label={1: "goldfish", 2: "shark, great white"}
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_tokenizer():
    """A real fast tokenizer with a small word-level vocabulary, built locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "a an the photo of cat dog red blue small big astronaut riding horse on moon painting".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def make_pixart_pipeline(num_layers: int = 2, seed: int = 0, attention_head_dim: int = 8):
    from diffusers import AutoencoderKL, DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=num_layers,
        patch_size=2,
        attention_head_dim=attention_head_dim,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=3 * attention_head_dim,  # the inner width, which the caption projection gives
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    vae = AutoencoderKL(
        block_out_channels=(8,),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=8,
    )
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=32,
            d_model=32,
            d_ff=37,
            d_kv=8,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    pipe = PixArtAlphaPipeline(
        tokenizer=make_tokenizer(),
        text_encoder=text_encoder.eval(),
        vae=vae.eval(),
        transformer=transformer.eval(),
        scheduler=DDIMScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def dit_pipe():
    return make_dit_pipeline()


@pytest.fixture
def pixart_pipe():
    return make_pixart_pipeline()


def run_dit(pipe, steps: int = 10, labels=(1, 2), seed: int = 0, guidance: float = 4.0):
    g = torch.Generator().manual_seed(seed)
    return pipe(
        class_labels=list(labels), num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="np"
    ).images


def run_pixart(pipe, steps: int = 6, prompt="a photo of a cat", seed: int = 0, **kw):
    g = torch.Generator().manual_seed(seed)
    return pipe(
        prompt=prompt,
        num_inference_steps=steps,
        generator=g,
        output_type="np",
        height=16,
        width=16,
        use_resolution_binning=False,
        clean_caption=False,
        max_sequence_length=8,
        **kw,
    ).images
