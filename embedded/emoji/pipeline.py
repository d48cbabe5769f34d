"""`EmojiDiTPipeline`: class-conditional sampling of the embedded pixel-space DiT, called as diffusers' DiTPipeline."""

import inspect

import numpy as np
import torch
from diffusers import DiffusionPipeline, DiTTransformer2DModel, ImagePipelineOutput
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

# Sampling defaults, chosen from measurements (assets/emoji-dit/README.md): accuracy against CPU time.
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 3.0


def pixels_to_output(latents: torch.Tensor, output_type: str):
    """A pixel-space model's [-1, 1] samples as `output_type`: "pt" (Bx3xHxW in [0, 1]), "np" (BxHxWx3) or "pil"."""
    images = (latents.float() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    return arr if output_type == "np" else [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]


class EmojiDiTPipeline(DiffusionPipeline):
    r"""
    Class-conditional pixel-space DiT with classifier-free guidance. There is no VAE: the transformer denoises
    RGB images in [-1, 1] directly.

    Args:
        transformer (`DiTTransformer2DModel`): the denoiser; its class table has `num_embeds_ada_norm` classes plus
            a null class (id `num_embeds_ada_norm`) used for the unconditional half of guidance.
        scheduler (`KarrasDiffusionSchedulers`): a diffusers scheduler (the shipped model uses DDIM, v-prediction).
        id2label (`dict[int, str]`, *optional*): class names; a value may hold several names separated by commas.
    """

    model_cpu_offload_seq = "transformer"

    def __init__(
        self,
        transformer: DiTTransformer2DModel,
        scheduler: KarrasDiffusionSchedulers,
        id2label: dict | None = None,
    ):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)
        id2label = {int(k): v for k, v in (id2label or {}).items()}
        self.register_to_config(id2label=id2label)
        self.id2label = id2label
        self.labels = {}
        for key, value in id2label.items():
            for label in value.split(","):
                self.labels[label.strip()] = key
        self.labels = dict(sorted(self.labels.items()))

    @property
    def num_classes(self) -> int:
        return self.transformer.config.num_embeds_ada_norm

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Map class names to ids; unknown names raise a `ValueError` listing the known ones."""
        names = [label] if isinstance(label, str) else list(label)
        for name in names:
            if name not in self.labels:
                raise ValueError(f"unknown class {name!r}; known classes: {', '.join(self.labels)}")
        return [self.labels[name] for name in names]

    def _class_ids(self, class_labels) -> torch.Tensor:
        items = [class_labels] if isinstance(class_labels, (int, str)) else list(class_labels)
        ids = []
        for item in items:
            cid = self.get_label_ids(item)[0] if isinstance(item, str) else int(item)
            if not 0 <= cid < self.num_classes:
                raise ValueError(f"class id {cid} out of range: allowed 0..{self.num_classes - 1}")
            ids.append(cid)
        if not ids:
            raise ValueError("class_labels is empty: give at least one class id or name")
        return torch.tensor(ids, device=self._execution_device)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | list[int | str],
        guidance_scale: float = DEFAULT_GUIDANCE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Args:
            class_labels (`int`, `str` or a list of them): class ids or names, one image each.
            guidance_scale (`float`, defaults to `DEFAULT_GUIDANCE`): classifier-free guidance; 1.0 turns guidance off.
            generator (`torch.Generator`, *optional*): for reproducible noise.
            num_inference_steps (`int`, defaults to `DEFAULT_STEPS`): denoising steps.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (HxWx3 floats in [0, 1]) or `"pt"`
                (Bx3xHxW floats in [0, 1]).
            callback_on_step_end (`Callable`, *optional*): called as `fn(pipe, step_index, timestep, {})` after
                each step.
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type={output_type!r}; allowed: 'pil', 'np', 'pt'")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps}; allowed: >= 1")
        labels = self._class_ids(class_labels)
        size = self.transformer.config.sample_size
        channels = self.transformer.config.in_channels
        dtype = self.transformer.dtype
        latents = randn_tensor(
            (len(labels), channels, size, size), generator=generator, device=self._execution_device, dtype=dtype
        )
        use_guidance = guidance_scale > 1.0
        model_labels = torch.cat([labels, torch.full_like(labels, self.num_classes)]) if use_guidance else labels

        self.scheduler.set_timesteps(num_inference_steps)
        latents = latents * self.scheduler.init_noise_sigma
        # stochastic samplers (DDPM) draw their per-step noise from the same generator(s), so a per-sample list of
        # generators fixes every sample's whole trajectory whatever else is in the batch
        step_kwargs = (
            {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        )
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = torch.cat([latents, latents]) if use_guidance else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            timesteps = t.expand(model_input.shape[0]).to(self._execution_device)
            out = self.transformer(model_input, timestep=timesteps, class_labels=model_labels).sample
            if use_guidance:
                cond, uncond = out.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(out, t, latents, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, t, {})

        output = pixels_to_output(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (output,)
        return ImagePipelineOutput(images=output)
