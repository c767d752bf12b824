"""The restoration pipeline: one degraded image and two prompts in, one restored image out.

    restorer = Restorer.from_pretrained("tiny")
    restored = restorer(image, restore="Deblur with sigma 1.5", prompt="a dog on a beach", seed=0)

`__call__` reads as the phases of SPIRE.md: validate, encode prompts, prepare latents, denoise, decode,
post-process. Every network call goes through the backend, so ONNX Runtime and TensorRT slot in unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .backends import Backend, create_backend
from .color_fix import COLOR_FIXES, color_fix
from .errors import OptionError
from .imageio import merge_image, split_image
from .models.spire_model import SpireModel, load_model
from .prompt_encoder import PromptEncoder
from .prompts import BLIND_PROMPT, parse_restoration_prompt
from .sampling import SAMPLERS, NoiseSchedule, trailing_timesteps

DEFAULT_MODEL = "tiny"  # the shipped spire-tiny
DEFAULT_DEVICE = "cpu"
# The self-ensemble's members: the image dims each one flips (identity, left-right, up-down, both). Restoring
# flipped copies and averaging them back is the geometric self-ensemble of super-resolution (Timofte et al.,
# "Seven ways to improve example-based single image super resolution", CVPR 2016; EDSR+, CVPRW 2017).
ENSEMBLE_FLIPS = ((), (3,), (2,), (2, 3))


@dataclass(frozen=True)
class RestoreOptions:
    """Every restoration option and its default, written once; the CLI is built from this."""

    restore: str = BLIND_PROMPT  # the restoration prompt (SPIRE.md grammar)
    prompt: str = ""  # the semantic prompt: what the picture shows
    steps: int = 1  # sampler steps (a few-step trailing schedule; the shipped tiny model is best at 1)
    sampler: str = "dpmpp_2m"  # one of sampling.SAMPLERS
    guidance: float = 4.0  # classifier-free guidance on the semantic prompt; used only when it is non-empty
    strength: float = 1.0  # < 1 starts from the degraded latent noised to strength*T (SDEdit-style)
    start_noise: float = 1.0  # at strength < 1, the scale of that noise (0: a deterministic start from E(y))
    adaptor_strength: float = 1.0  # s in (1 + s*gamma) * f + s*beta; 0 gives the frozen prior
    seed: int | None = None  # None draws one; the seed used is in `last_run`
    color_fix: str = "wavelet"  # one of color_fix.COLOR_FIXES
    ensemble: int = 1  # restore this many flipped copies (ENSEMBLE_FLIPS), average them: N times the work

    def validated(self) -> RestoreOptions:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise OptionError(f"steps must be a positive integer, got {self.steps!r}")
        if self.sampler not in SAMPLERS:
            raise OptionError(f"unknown sampler {self.sampler!r}; use one of {', '.join(SAMPLERS)}")
        if not 0 < self.strength <= 1:
            raise OptionError(f"strength must be in (0, 1], got {self.strength}")
        if not 0 <= self.start_noise <= 1:
            raise OptionError(f"start noise must be in [0, 1], got {self.start_noise}")
        if not np.isfinite(self.guidance) or self.guidance < 0:
            raise OptionError(f"guidance must be a finite number >= 0, got {self.guidance}")
        if not np.isfinite(self.adaptor_strength):
            raise OptionError(f"adaptor strength must be finite, got {self.adaptor_strength}")
        if self.color_fix not in COLOR_FIXES:
            raise OptionError(f"unknown colour fix {self.color_fix!r}; use one of {', '.join(COLOR_FIXES)}")
        if isinstance(self.ensemble, bool) or not isinstance(self.ensemble, (int, np.integer)) \
                or not 1 <= self.ensemble <= len(ENSEMBLE_FLIPS):
            raise OptionError(f"ensemble must be 1 .. {len(ENSEMBLE_FLIPS)} (flipped copies averaged), "
                              f"got {self.ensemble!r}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise OptionError(f"seed must be in 0 .. 2**63-1, got {self.seed}")
        return replace(self, restore=str(parse_restoration_prompt(self.restore)))


@dataclass
class RunInfo:
    """What the last call did: the options as run (canonical prompt, drawn seed), sizes and phase timings."""

    options: RestoreOptions
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    padded_size: tuple[int, int]
    timesteps: list[int]
    timings: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


class Restorer:
    def __init__(self, model: SpireModel, backend: Backend):
        self.model = model
        self.backend = backend
        self.schedule = NoiseSchedule.from_config(model.scheduler_config)
        self.prompts = PromptEncoder(backend, model.tokenizer, model.max_text_length)
        self.last_run: RunInfo | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL, backend: str | None = None,
                        device: str = DEFAULT_DEVICE, dtype=None, adaptor: str | None = None,
                        **backend_options) -> Restorer:
        """`backend_options` go to the backend: `threads` (CPU), ONNX Runtime's `cache`, ... (create_backend)."""
        model = load_model(name_or_path, adaptor=adaptor)
        return cls(model, create_backend(backend, model, device=device, dtype=dtype, **backend_options))

    def __call__(self, image: Image.Image | np.ndarray, progress: Callable[[int, int], None] | None = None,
                 **options) -> Image.Image:
        timings: dict[str, float] = {}
        started = time.perf_counter()

        # 1. Validate: options, the restoration prompt (canonical form), the image and the output size.
        with self.timed(timings, "validate"):
            opts = self.resolve(options)
            seed = opts.seed if opts.seed is not None else int(torch.randint(0, 2**62, ()).item())
            opts = replace(opts, seed=seed)
            source = split_image(image)
            scale = parse_restoration_prompt(opts.restore).scale
            height, width = source.rgb.shape[:2]
            out_size = (max(1, round(height * scale)), max(1, round(width * scale)))
            guided = bool(opts.prompt) and opts.guidance != 1.0

        # 2. Encode prompts (cached): the restoration prompt for the adaptor, the semantic one for the UNet.
        with self.timed(timings, "encode_prompts"):
            restore_embeddings = self.prompts.encode([opts.restore])
            semantic = ["", opts.prompt] if guided else [opts.prompt]
            semantic_embeddings = self.prompts.encode(semantic)

        # 3. Prepare latents: y at the output size, padded for the networks, encoded once per ensemble member
        #    (each sees y flipped); the starting latents, from one noise draw flipped with the member, so all
        #    members start from the same noise on the same pixels and the average of a noisy start stays sharp.
        with self.timed(timings, "prepare_latents"):
            y = torch.from_numpy(source.rgb).permute(2, 0, 1)[None].to(self.backend.device)
            y = resize(y, out_size)
            y_padded = pad_to_multiple(y, self.model.pixel_multiple)
            members = ENSEMBLE_FLIPS[: opts.ensemble]
            y_latents = [self.backend.run("vae_encoder", {"image": flip(y_padded, dims) * 2 - 1})["latent"]
                         for dims in members]
            timesteps = trailing_timesteps(opts.steps, self.schedule.num_train_timesteps, opts.strength)
            generator = torch.Generator("cpu").manual_seed(seed)
            noise = torch.randn(y_latents[0].shape, generator=generator).to(y_latents[0].device)
            starts = [flip(noise, dims) if opts.strength == 1 else
                      self.schedule.add_noise(y_latent, opts.start_noise * flip(noise, dims), timesteps[:1])
                      for y_latent, dims in zip(y_latents, members)]

        # 4. Denoise: the sampler drives the backend's denoiser (one guided step per call), for each member.
        with self.timed(timings, "denoise"):
            network = "denoiser_guided" if guided else "denoiser"
            sampler = SAMPLERS[opts.sampler]
            shared_feeds = {
                "restore_embeddings": restore_embeddings,
                "semantic_embeddings": semantic_embeddings,
                "adaptor_strength": torch.tensor([opts.adaptor_strength], device=self.backend.device),
                "guidance_scale": torch.tensor([opts.guidance], device=self.backend.device),
            }
            latents = []
            for member, (y_latent, start) in enumerate(zip(y_latents, starts)):
                denoise = partial(self.denoise, network, {**shared_feeds, "y_latent": y_latent})
                on_step = partial(self.report_step, progress, member * len(timesteps),
                                  len(members) * len(timesteps))
                latents.append(sampler(denoise, start, timesteps, self.schedule, callback=on_step))

        # 5. Decode each member and flip it back; the members are averaged as images, not as latents: the
        #    latent of a flipped image is not the flipped latent (its channels carry orientation), and a latent
        #    mean of two members lost 0.8 dB on spire-tiny's validation photographs where the image mean gained
        #    0.1. The decoder also sees the member's y (a model with a fidelity branch reads it).
        with self.timed(timings, "decode"):
            decoded = 0
            for latent, dims in zip(latents, members):  # a running sum: one full-size image held, not N
                feeds = {"latent": latent, "y_image": flip(y_padded, dims) * 2 - 1}
                decoded = decoded + flip(self.backend.run("vae_decoder", feeds)["image"], dims)
            decoded = decoded / len(members)

        # 6. Post-process: crop the padding, fix colours against y, back to the input's kind of image.
        with self.timed(timings, "postprocess"):
            restored = ((decoded[:, :, : out_size[0], : out_size[1]] + 1) / 2).clamp(0, 1)
            restored = color_fix(restored, y, opts.color_fix).clamp(0, 1)
            alpha = None
            if source.alpha is not None:
                alpha_plane = torch.from_numpy(source.alpha)[None, None]
                alpha = resize(alpha_plane, out_size)[0, 0].numpy()
            result = merge_image(restored[0].permute(1, 2, 0).float().cpu().numpy(), alpha, source.kind)

        timings["total"] = time.perf_counter() - started
        self.last_run = RunInfo(options=opts, input_size=(height, width), output_size=out_size,
                                padded_size=tuple(y_padded.shape[2:]), timesteps=timesteps.tolist(),
                                timings=timings)
        return result

    def denoise(self, network: str, feeds: dict, sample: torch.Tensor, timestep: torch.Tensor
                ) -> torch.Tensor:
        """One call of the denoiser network: the model output for `sample` at `timestep`, with `feeds`."""
        feeds = {**feeds, "sample": sample, "timestep": timestep.to(sample.device)}
        return self.backend.run(network, feeds)["model_output"]

    @staticmethod
    def report_step(progress: Callable[[int, int], None] | None, done_before: int, total: int, index: int,
                    _timestep, _sample) -> None:
        """The sampler's per-step callback: steps done over all ensemble members, out of all of them."""
        if progress is not None:
            progress(done_before + index + 1, total)

    def resolve(self, options: dict) -> RestoreOptions:
        """The options a call runs with: the caller's, then the model's restore_defaults, then RestoreOptions'."""
        unknown = set(options) - {f.name for f in fields(RestoreOptions)}
        if unknown:
            raise TypeError(f"unknown restoration options: {', '.join(sorted(unknown))}")
        return RestoreOptions(**{**self.model.restore_defaults, **options}).validated()

    @contextmanager
    def timed(self, timings: dict[str, float], phase: str):
        """Wall time of one phase; on CUDA, waits for the device so the time is the phase's own."""
        started = time.perf_counter()
        yield
        if self.backend.device.type == "cuda":
            torch.cuda.synchronize(self.backend.device)
        timings[phase] = time.perf_counter() - started

    def close(self) -> None:
        self.backend.close()


def flip(tensor: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """`tensor` flipped along `dims` (itself when there are none, so a lone member costs no copy)."""
    return torch.flip(tensor, dims) if dims else tensor


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic to `size` (antialiased when shrinking), clamped back into [0, 1]."""
    if tuple(image.shape[2:]) == tuple(size):
        return image
    shrinking = size[0] < image.shape[2] or size[1] < image.shape[3]
    resized = F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=shrinking)
    return resized.clamp(0, 1)


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom and right to a multiple of `multiple`: reflected where the image is big enough, else repeated."""
    height, width = image.shape[2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode)
