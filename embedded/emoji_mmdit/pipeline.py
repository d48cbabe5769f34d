"""`EmojiMMDiTPipeline`: text-to-image sampling of the embedded pixel-space MMDiT, called as diffusers'
StableDiffusion3Pipeline (`pipe(prompt, num_inference_steps=..., guidance_scale=...)`)."""

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput, SD3Transformer2DModel
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerFast

from embedded.emoji.pipeline import pixels_to_output

from .text import check_prompt

# Sampling defaults (assets/emoji-mmdit/README.md says how they were chosen)
DEFAULT_STEPS = 28
DEFAULT_GUIDANCE = 4.0


class EmojiMMDiTPipeline(DiffusionPipeline):
    r"""
    Text-to-image with SD3's MMDiT in pixel space: the transformer denoises 32x32 RGB images in [-1, 1] directly
    (no VAE) by rectified flow, conditioned on a small CLIP text encoder's hidden states (the context stream of
    joint attention) and pooled embedding (the timestep conditioning), with classifier-free guidance against the
    empty prompt.

    Args:
        transformer (`SD3Transformer2DModel`): the denoiser (`JointTransformerBlock`s).
        scheduler (`FlowMatchEulerDiscreteScheduler`): rectified-flow Euler sampler.
        text_encoder (`CLIPTextModelWithProjection`): trained with the transformer from scratch.
        tokenizer (`PreTrainedTokenizerFast`): word level over the caption grammar; unknown words are refused.
    """

    model_cpu_offload_seq = "text_encoder->transformer"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        text_encoder: CLIPTextModelWithProjection,
        tokenizer: PreTrainedTokenizerFast,
    ):
        super().__init__()
        self.register_modules(
            transformer=transformer, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer
        )

    def check_prompt(self, prompt) -> None:
        """Refuse a prompt this model cannot read (`ValueError` naming the unknown words and listing the known)."""
        check_prompt(prompt, self.tokenizer)

    @property
    def sample_size(self) -> int:
        return self.transformer.config.sample_size

    def encode_prompt(self, prompt: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states B x L x D, pooled B x D) of the prompts, each padded to the tokenizer's length."""
        ids = self.tokenizer(
            prompt, padding="max_length", max_length=self.tokenizer.model_max_length, return_tensors="pt"
        ).input_ids.to(self._execution_device)
        out = self.text_encoder(ids)
        dtype = self.transformer.dtype
        return out.last_hidden_state.to(dtype), out.text_embeds.to(dtype)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        r"""
        Args:
            prompt (`str` or `list[str]`): captions in the model's vocabulary (an unknown word raises a
                `ValueError` naming it and listing the words the model knows).
            negative_prompt (`str` or `list[str]`, *optional*): the unconditional half of guidance (default "").
            num_inference_steps (`int`, defaults to `DEFAULT_STEPS`): Euler steps.
            guidance_scale (`float`, defaults to `DEFAULT_GUIDANCE`): classifier-free guidance; <= 1 turns it off.
            num_images_per_prompt (`int`, defaults to 1).
            height, width (`int`, *optional*): only the trained size (32) is allowed.
            generator (`torch.Generator` or a list of them, *optional*): for reproducible noise.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (BxHxWx3 in [0, 1]) or `"pt"` (Bx3xHxW).
            callback_on_step_end (`Callable`, *optional*): `fn(pipe, step_index, timestep, {"latents": ...})`
                after each step; a returned dict may replace the latents.
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type={output_type!r}; allowed: 'pil', 'np', 'pt'")
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or num_inference_steps < 1
        ):
            raise ValueError(f"num_inference_steps={num_inference_steps!r}; allowed: an integer >= 1")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt={num_images_per_prompt!r}; allowed: an integer >= 1")
        size = self.sample_size
        for name, value in (("height", height), ("width", width)):
            if value is not None and value != size:
                raise ValueError(f"{name}={value}: this model makes {size}x{size} images only")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt is empty: give at least one caption")
        for p in prompts:
            check_prompt(p, self.tokenizer)
            if not p.strip():
                raise ValueError("prompt is empty: give a caption, e.g. 'a small cat on the left on a red background'")
        negatives = (
            [negative_prompt or ""] * len(prompts) if not isinstance(negative_prompt, list) else negative_prompt
        )
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
        for p in negatives:
            check_prompt(p, self.tokenizer)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        negatives = [p for p in negatives for _ in range(num_images_per_prompt)]

        use_guidance = guidance_scale > 1.0
        embeds, pooled = self.encode_prompt(negatives + prompts if use_guidance else prompts)
        channels = self.transformer.config.in_channels
        latents = randn_tensor(
            (len(prompts), channels, size, size),
            generator=generator,
            device=self._execution_device,
            dtype=self.transformer.dtype,
        )
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = torch.cat([latents, latents]) if use_guidance else latents
            out = self.transformer(
                hidden_states=model_input,
                encoder_hidden_states=embeds,
                pooled_projections=pooled,
                timestep=t.expand(model_input.shape[0]),
                return_dict=False,
            )[0]
            if use_guidance:
                uncond, cond = out.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(out, t, latents, return_dict=False)[0]
            if callback_on_step_end is not None:
                result = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                latents = result.pop("latents", latents)

        output = pixels_to_output(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (output,)
        return ImagePipelineOutput(images=output)
