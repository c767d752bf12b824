"""One descriptor per exported network: what the exporter traces, what ONNX Runtime feeds, what TensorRT profiles.

    descriptor = DESCRIPTORS["denoiser_guided"](model, profile)
    descriptor.inputs()          TensorSpec(name, dtype, shape) with named dims: "B", "2B", "T", "L", "H", "W", "h", "w"
    descriptor.dim_ranges()      {dim: (min, opt, max)} for this model and shape profile
    descriptor.shapes("min")     {tensor name: concrete shape} at the profile's min / opt / max
    descriptor.dynamic_axes()    {tensor name: {axis: dim}} for the dims whose min != max
    descriptor.sample_inputs()   fresh random feeds (float32 / int64) at a profile point
    descriptor.check_feeds(...)  a one-line ShapeError when a feed is outside the exported range

Tensor names come from `spire_rt.models.networks` (NETWORK_INPUTS / NETWORK_OUTPUTS); the split pair `unet` +
`adaptor` adds the modulation tensors that travel between them (`modulation_00`.. and `modulation_mid`: gamma and
beta concatenated, one per UNet skip and one for the mid output; SPIRE.md "Modulation fusion").

Dims: B is the image batch, 2B the UNet batch of a guided step, N the split UNet's batch (B or 2B), T the text
batch, L the token length; H, W are image pixels and h, w latent pixels; "h/2", "w/4".. the UNet's lower levels.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import OptionError
from ..models.adaptor import SpireAdaptor, skip_layout
from ..models.modulated_unet import unet_forward_modulated
from ..models.networks import (
    NETWORK_INPUTS,
    NETWORK_OUTPUTS,
    DenoiserNet,
    TextEncoderNet,
    VaeDecoderNet,
    VaeEncoderNet,
)
from ..models.spire_model import SpireModel
from . import ShapeError

PRECISIONS = ("fp32", "fp16")
MAX_SIDE = 2048  # the default profile's largest image side, in pixels (a 4x upsample of a 512 image)
FLOAT = "float"  # a TensorSpec dtype meaning "the graph's float type" (float32, or float16 in an fp16 graph)
PROFILE_POINTS = ("min", "opt", "max")


@dataclass(frozen=True)
class ShapeProfile:
    """The image sizes (pixels, height x width) and batches an exported graph accepts; min == max makes it static."""

    min_size: tuple[int, int]
    opt_size: tuple[int, int]
    max_size: tuple[int, int]
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1

    @classmethod
    def static(cls, size: tuple[int, int], batch: int = 1) -> ShapeProfile:
        return cls(tuple(size), tuple(size), tuple(size), batch, batch, batch)

    @classmethod
    def dynamic(cls, min_side: int, max_side: int, opt_size: tuple[int, int], max_batch: int = 1) -> ShapeProfile:
        opt = tuple(min(max(side, min_side), max_side) for side in opt_size)
        return cls((min_side, min_side), opt, (max_side, max_side), 1, 1, max_batch)

    @classmethod
    def default(cls, model: SpireModel) -> ShapeProfile:
        """What the ONNX Runtime backend exports when asked nothing: any size the pipeline can pad to."""
        multiple = model.pixel_multiple
        opt = round_up(int(model.vae.config.sample_size), multiple)
        return cls.dynamic(multiple, round_up(MAX_SIDE, multiple), (opt, opt))

    @classmethod
    def parse(cls, size: str | None, dynamic: str | None, model: SpireModel, batch: int = 1) -> ShapeProfile:
        """`--size HxW` (static) or `--dynamic MIN:MAX[:OPT]` (sides in pixels); neither: the default range."""
        if size and dynamic:
            raise OptionError("give either --size HxW (static shapes) or --dynamic MIN:MAX, not both")
        if batch < 1:
            raise OptionError(f"batch must be >= 1, got {batch}")
        if size:
            profile = cls.static(parse_size(size), batch)
        elif dynamic:
            match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*(?::\s*(\d+)\s*)?", dynamic)
            if not match:
                raise OptionError(f"--dynamic must look like MIN:MAX or MIN:MAX:OPT (pixels), got {dynamic!r}")
            low, high = int(match[1]), int(match[2])
            opt = int(match[3]) if match[3] else min(max(int(model.vae.config.sample_size), low), high)
            profile = cls.dynamic(low, high, (opt, opt), max_batch=batch)
        else:
            profile = dataclasses.replace(cls.default(model), max_batch=batch)
        profile.validate(model.pixel_multiple)
        return profile

    def validate(self, multiple: int) -> None:
        for which in PROFILE_POINTS:
            for side in self.size(which):
                if side < multiple or side % multiple:
                    raise OptionError(f"image sides must be positive multiples of {multiple} for this model; "
                                      f"the {which} size is {self.size(which)[0]}x{self.size(which)[1]}")
        for axis in (0, 1):
            if not self.min_size[axis] <= self.opt_size[axis] <= self.max_size[axis]:
                raise OptionError(f"shape profile needs min <= opt <= max, got {self.describe()}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise OptionError(f"shape profile needs 1 <= min batch <= opt <= max, got {self.describe()}")

    def size(self, which: str) -> tuple[int, int]:
        return {"min": self.min_size, "opt": self.opt_size, "max": self.max_size}[which]

    def batch(self, which: str) -> int:
        return {"min": self.min_batch, "opt": self.opt_batch, "max": self.max_batch}[which]

    def describe(self) -> str:
        sizes = (f"{self.opt_size[0]}x{self.opt_size[1]}" if self.min_size == self.max_size else
                 f"{self.min_size[0]}x{self.min_size[1]}..{self.max_size[0]}x{self.max_size[1]}")
        batches = str(self.opt_batch) if self.min_batch == self.max_batch else f"{self.min_batch}..{self.max_batch}"
        return f"{sizes} px, batch {batches}"

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ShapeProfile:
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise OptionError(f"size must look like HxW (e.g. 512x512), got {text!r}")
    return int(match[1]), int(match[2])


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str | torch.dtype  # FLOAT (the graph's float type) or a fixed torch dtype (int64 ids and timesteps)
    shape: tuple[int | str, ...]  # ints are fixed; strings name a dim of NetworkDescriptor.dim_ranges()

    def torch_dtype(self, float_dtype: torch.dtype) -> torch.dtype:
        return float_dtype if self.dtype == FLOAT else self.dtype


# --- the split UNet / adaptor pair: small wrappers over the model's own forward code ---------------------------

class UnetNet(nn.Module):
    """The frozen UNet alone, its skips and mid output modulated by the adaptor's outputs fed in as inputs."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, semantic_embeddings, adaptor_strength, *modulations):
        return unet_forward_modulated(self.unet, sample, timestep, semantic_embeddings, list(modulations),
                                      adaptor_strength)


class AdaptorNet(nn.Module):
    """The adaptor alone: its gamma/beta per skip and for the mid output, as separate named outputs."""

    def __init__(self, adaptor: SpireAdaptor):
        super().__init__()
        self.adaptor = adaptor

    def forward(self, sample, timestep, y_latent, restore_embeddings):
        return tuple(self.adaptor(sample, timestep, y_latent, restore_embeddings))


def modulation_names(model: SpireModel) -> tuple[str, ...]:
    skips = model.controlnet.num_modulations - 1
    return tuple(f"modulation_{index:02d}" for index in range(skips)) + ("modulation_mid",)


def modulation_levels(model: SpireModel) -> list[int]:
    """The UNet level (0 = full latent resolution) of each modulation, skips in order then the mid output."""
    config = model.unet.config
    return [level for level, _ in skip_layout(config)] + [len(config.block_out_channels) - 1]


def modulation_channels(model: SpireModel) -> list[int]:
    heads = [*model.controlnet.skip_heads, model.controlnet.mid_head]
    return [head.out_channels for head in heads]


def modulation_specs(model: SpireModel, batch: str) -> tuple[TensorSpec, ...]:
    """The modulation tensors between the adaptor and UNet graphs, at batch axis `batch` ("B" or "N")."""
    specs = []
    for name, level, channels in zip(modulation_names(model), modulation_levels(model), modulation_channels(model)):
        suffix = f"/{2 ** level}" if level else ""
        specs.append(TensorSpec(name, FLOAT, (batch, channels, "h" + suffix, "w" + suffix)))
    return tuple(specs)


# --- descriptors ------------------------------------------------------------------------------------------------

class NetworkDescriptor:
    """Names, dtypes, dims and sample inputs of one network, for one model and shape profile."""

    name: ClassVar[str]
    uses: ClassVar[tuple[str, ...]]  # the SpireModel modules the network runs
    fp32_at_fp16: ClassVar[str]  # what stays in float32 when the graph is exported at fp16 (for the manifest)

    def __init__(self, model: SpireModel, profile: ShapeProfile):
        self.model = model
        self.profile = profile

    # names ---------------------------------------------------------------------------------------------------
    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs())

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs())

    def inputs(self) -> tuple[TensorSpec, ...]:
        raise NotImplementedError

    def outputs(self) -> tuple[TensorSpec, ...]:
        raise NotImplementedError

    def build(self, model: SpireModel) -> nn.Module:
        """The traceable module, from `model`'s modules (which may be an fp16 copy)."""
        raise NotImplementedError

    # dims ----------------------------------------------------------------------------------------------------
    def dim_ranges(self) -> dict[str, tuple[int, int, int]]:
        model, profile = self.model, self.profile
        vae = model.vae_scale_factor
        ranges: dict[str, tuple[int, int, int]] = {}
        batches = tuple(profile.batch(which) for which in PROFILE_POINTS)
        ranges["B"] = batches
        ranges["2B"] = tuple(2 * b for b in batches)
        ranges["N"] = (batches[0], batches[1], 2 * batches[2])
        ranges["T"] = (1, 1, 2 * batches[2])  # prompts are encoded together: restoration, semantic, empty
        length = model.max_text_length
        ranges["L"] = (length, length, length)
        for axis, (big, small) in enumerate((("H", "h"), ("W", "w"))):
            sides = tuple(profile.size(which)[axis] for which in PROFILE_POINTS)
            ranges[big] = sides
            ranges[small] = tuple(side // vae for side in sides)
            for level in range(1, len(model.unet.config.block_out_channels)):
                ranges[f"{small}/{2 ** level}"] = tuple(side // vae // 2 ** level for side in sides)
        return ranges

    def dims(self, which: str) -> dict[str, int]:
        index = PROFILE_POINTS.index(which)
        return {dim: values[index] for dim, values in self.dim_ranges().items()}

    def shapes(self, which: str) -> dict[str, tuple[int, ...]]:
        dims = self.dims(which)
        return {spec.name: resolve(spec.shape, dims) for spec in (*self.inputs(), *self.outputs())}

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        ranges = self.dim_ranges()
        axes = {}
        for spec in (*self.inputs(), *self.outputs()):
            dynamic = {axis: dim for axis, dim in enumerate(spec.shape)
                       if isinstance(dim, str) and ranges[dim][0] != ranges[dim][2]}
            if dynamic:
                axes[spec.name] = dynamic
        return axes

    def graph_dtype(self, precision: str) -> torch.dtype:
        check_precision(precision)
        return torch.float16 if precision == "fp16" else torch.float32

    def to_dict(self, precision: str) -> dict:
        """The descriptor as the manifest records it."""
        dtype = self.graph_dtype(precision)
        return {
            "inputs": {s.name: {"dtype": str(s.torch_dtype(dtype)).removeprefix("torch."), "shape": list(s.shape)}
                       for s in self.inputs()},
            "outputs": {s.name: {"dtype": str(s.torch_dtype(dtype)).removeprefix("torch."), "shape": list(s.shape)}
                        for s in self.outputs()},
            "dims": {dim: list(values) for dim, values in self.dim_ranges().items()
                     if any(dim in s.shape for s in (*self.inputs(), *self.outputs()))},
            "fp32_islands": self.fp32_at_fp16 if precision == "fp16" else "none (fp32 graph)",
        }

    # modules -------------------------------------------------------------------------------------------------
    def module(self) -> nn.Module:
        """The network at the model's own precision: the PyTorch reference the checks compare against."""
        return self.build(self.model).eval()

    def export_module(self, precision: str) -> nn.Module:
        """What the exporter traces: the module itself, or an fp16 copy with its overflow-prone parts in fp32."""
        if self.graph_dtype(precision) == torch.float32:
            return self.module()
        copies = {name: half_copy(getattr(self.model, name)) for name in self.uses}
        return self.build(dataclasses.replace(self.model, **copies)).eval()

    # feeds ---------------------------------------------------------------------------------------------------
    def sample_inputs(self, which: str = "opt", seed: int = 0, dims: dict[str, int] | None = None
                      ) -> dict[str, torch.Tensor]:
        """Fresh random feeds at a profile point (float32 / int64; the caller casts to the graph's type)."""
        dims = dims or self.dims(which)
        generator = torch.Generator().manual_seed(seed)
        feeds = {}
        for spec in self.inputs():
            shape = resolve(spec.shape, dims)
            feeds[spec.name] = sample_tensor(spec.name, shape, generator, self.model)
        return feeds

    def check_feeds(self, feeds: dict[str, torch.Tensor]) -> dict[str, int]:
        """Bind every named dim from the feeds' shapes; a one-line ShapeError when one is outside the range."""
        ranges = self.dim_ranges()
        bound: dict[str, int] = {}
        for spec in self.inputs():
            if spec.name not in feeds:
                raise ShapeError(f"{self.name}: missing input {spec.name!r} (inputs: {', '.join(self.input_names)})")
            shape = tuple(feeds[spec.name].shape)
            if len(shape) != len(spec.shape):
                raise ShapeError(f"{self.name}: input {spec.name} has shape {list(shape)}, expected "
                                 f"{len(spec.shape)} dims {list(spec.shape)}")
            for axis, (dim, size) in enumerate(zip(spec.shape, shape)):
                if isinstance(dim, int):
                    if size != dim:
                        raise ShapeError(f"{self.name}: input {spec.name} has {size} at axis {axis}, this graph "
                                         f"needs {dim} (shape {list(shape)})")
                    continue
                if bound.setdefault(dim, size) != size:
                    raise ShapeError(f"{self.name}: input {spec.name} has {dim}={size} at axis {axis}, but "
                                     f"another input has {dim}={bound[dim]}")
                low, _, high = ranges[dim]
                if not low <= size <= high:
                    hint = "a larger --batch" if dim in ("B", "2B", "N", "T") else "a wider --dynamic range"
                    raise ShapeError(f"{self.name}: input {spec.name} has shape {list(shape)}, outside the exported "
                                     f"range ({dim} in {low}..{high}; profile {self.profile.describe()}); "
                                     f"export again with {hint}")
        if "B" in bound and "2B" in bound and bound["2B"] != 2 * bound["B"]:
            raise ShapeError(f"{self.name}: a guided step needs twice the image batch of semantic embeddings, "
                             f"got {bound['2B']} for a batch of {bound['B']}")
        scale = self.model.vae_scale_factor
        for big, small in (("H", "h"), ("W", "w")):  # the decoder's y_image against its latent
            if big in bound and small in bound and bound[big] != scale * bound[small]:
                raise ShapeError(f"{self.name}: an image side of {bound[big]} px does not match a latent side of "
                                 f"{bound[small]} ({scale} px per latent pixel)")
        return bound

    def output_shapes(self, bound: dict[str, int]) -> dict[str, tuple[int, ...]] | None:
        """Each output's shape from the dims bound by `check_feeds`, or None if one is not determined."""
        dims = dict(bound)
        vae = self.model.vae_scale_factor
        for big, small in (("H", "h"), ("W", "w")):
            if small in dims:
                dims.setdefault(big, dims[small] * vae)
            elif big in dims:
                dims[small] = dims[big] // vae
            if small in dims:
                for level in range(1, len(self.model.unet.config.block_out_channels)):
                    dims.setdefault(f"{small}/{2 ** level}", dims[small] // 2 ** level)
        if "B" in dims:
            dims.setdefault("2B", 2 * dims["B"])
        try:
            return {spec.name: resolve(spec.shape, dims) for spec in self.outputs()}
        except KeyError:
            return None


def resolve(shape: tuple[int | str, ...], dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(dim if isinstance(dim, int) else dims[dim] for dim in shape)


def sample_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator, model: SpireModel) -> torch.Tensor:
    """A random but plausible value for one named input."""
    if name == "input_ids":
        ids = torch.randint(0, model.text_encoder.config.vocab_size, shape, generator=generator)
        ids[:, 0] = model.tokenizer.bos_token_id
        return ids
    if name == "timestep":
        steps = int(model.scheduler_config.get("num_train_timesteps", 1000))
        return torch.randint(0, steps, shape, generator=generator)
    if name == "adaptor_strength":
        return 0.5 + torch.rand(shape, generator=generator)
    if name == "guidance_scale":
        return 1.0 + 7.0 * torch.rand(shape, generator=generator)
    if name in ("image", "y_image"):
        return torch.rand(shape, generator=generator) * 2 - 1
    if name.startswith("modulation_"):
        return torch.randn(shape, generator=generator) * 0.1
    return torch.randn(shape, generator=generator)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise OptionError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")


def half_copy(module: nn.Module) -> nn.Module:
    """An fp16 copy whose attention computes scores and softmax in fp32 (SD 2.x overflows there in fp16)."""
    copied = copy.deepcopy(module).to(torch.float16).eval()
    for sub in copied.modules():
        if hasattr(sub, "upcast_softmax") and hasattr(sub, "set_processor"):  # a diffusers Attention
            from diffusers.models.attention_processor import AttnProcessor

            sub.upcast_attention = True
            sub.upcast_softmax = True
            sub.set_processor(AttnProcessor())
    if hasattr(copied, "set_attn_implementation"):  # transformers' eager attention runs its softmax in fp32
        copied.set_attn_implementation("eager")
    return copied


class TextEncoderDescriptor(NetworkDescriptor):
    name = "text_encoder"
    uses = ("text_encoder",)
    fp32_at_fp16 = "attention softmax (eager attention: softmax in float32)"

    def inputs(self):
        return (TensorSpec(NETWORK_INPUTS[self.name][0], torch.int64, ("T", "L")),)

    def outputs(self):
        width = self.model.text_encoder.config.hidden_size
        return (TensorSpec(NETWORK_OUTPUTS[self.name][0], FLOAT, ("T", "L", width)),)

    def build(self, model):
        return TextEncoderNet(model.text_encoder, model.text_layer)


class DenoiserDescriptor(NetworkDescriptor):
    """The adaptor and the modulated UNet in one graph, everything at batch B (unguided)."""

    name = "denoiser"
    uses = ("unet", "controlnet")
    fp32_at_fp16 = "attention scores (QK^T) and softmax in UNet and adaptor (upcast)"
    guided = False

    def inputs(self):
        model = self.model
        latent = ("B", model.latent_channels, "h", "w")
        restore = ("B", "L", model.controlnet.config.unet_config["cross_attention_dim"])
        semantic = ("2B" if self.guided else "B", "L", model.unet.config.cross_attention_dim)
        shapes = {"sample": latent, "timestep": (1,), "y_latent": latent, "restore_embeddings": restore,
                  "semantic_embeddings": semantic, "adaptor_strength": (1,), "guidance_scale": (1,)}
        dtypes = {"timestep": torch.int64}
        return tuple(TensorSpec(name, dtypes.get(name, FLOAT), shapes[name]) for name in NETWORK_INPUTS[self.name])

    def outputs(self):
        shape = ("B", self.model.unet.config.out_channels, "h", "w")
        return (TensorSpec(NETWORK_OUTPUTS[self.name][0], FLOAT, shape),)

    def build(self, model):
        return DenoiserNet(model.unet, model.controlnet, guided=self.guided)


class GuidedDenoiserDescriptor(DenoiserDescriptor):
    """One guided step: the adaptor at batch B, its gamma/beta shared by both UNet branches at batch 2B."""

    name = "denoiser_guided"
    guided = True


class UnetDescriptor(NetworkDescriptor):
    """The frozen UNet alone at batch N (B, or 2B for a guided step), modulations fed in at the same batch."""

    name = "unet"
    uses = ("unet",)
    fp32_at_fp16 = "attention scores (QK^T) and softmax (upcast)"

    def inputs(self):
        model = self.model
        own = {"sample": ("N", model.latent_channels, "h", "w"), "timestep": (1,),
               "semantic_embeddings": ("N", "L", model.unet.config.cross_attention_dim), "adaptor_strength": (1,)}
        dtypes = {"timestep": torch.int64}
        specs = [TensorSpec(name, dtypes.get(name, FLOAT), own[name])
                 for name in NETWORK_INPUTS["denoiser"] if name in own]
        return (*specs, *modulation_specs(model, "N"))

    def outputs(self):
        shape = ("N", self.model.unet.config.out_channels, "h", "w")
        return (TensorSpec(NETWORK_OUTPUTS["denoiser"][0], FLOAT, shape),)

    def build(self, model):
        return UnetNet(model.unet)


class AdaptorDescriptor(NetworkDescriptor):
    """The adaptor alone at batch B: one output per modulation (gamma and beta concatenated on channels)."""

    name = "adaptor"
    uses = ("controlnet",)
    fp32_at_fp16 = "attention scores (QK^T) and softmax (upcast)"

    def inputs(self):
        model = self.model
        latent = ("B", model.latent_channels, "h", "w")
        own = {"sample": latent, "timestep": (1,), "y_latent": latent,
               "restore_embeddings": ("B", "L", model.controlnet.config.unet_config["cross_attention_dim"])}
        dtypes = {"timestep": torch.int64}
        return tuple(TensorSpec(name, dtypes.get(name, FLOAT), own[name])
                     for name in NETWORK_INPUTS["denoiser"] if name in own)

    def outputs(self):
        return modulation_specs(self.model, "B")

    def build(self, model):
        return AdaptorNet(model.controlnet)


class VaeEncoderDescriptor(NetworkDescriptor):
    name = "vae_encoder"
    uses = ("vae",)
    fp32_at_fp16 = "whole network (the SD VAE overflows in fp16)"

    def inputs(self):
        return (TensorSpec(NETWORK_INPUTS[self.name][0], FLOAT, ("B", self.model.vae.config.in_channels, "H", "W")),)

    def outputs(self):
        return (TensorSpec(NETWORK_OUTPUTS[self.name][0], FLOAT, ("B", self.model.latent_channels, "h", "w")),)

    def graph_dtype(self, precision):
        check_precision(precision)
        return torch.float32

    def build(self, model):
        return VaeEncoderNet(model.vae)


class VaeDecoderDescriptor(VaeEncoderDescriptor):
    """The decoder, and the fidelity branch where the model has one (it runs in fp32 with the VAE); without one,
    y_image is not read and torch leaves it out of the graph (the manifest's unused_inputs)."""

    name = "vae_decoder"

    def inputs(self):
        latent, y_image = NETWORK_INPUTS[self.name]
        return (TensorSpec(latent, FLOAT, ("B", self.model.latent_channels, "h", "w")),
                TensorSpec(y_image, FLOAT, ("B", self.model.vae.config.out_channels, "H", "W")))

    def outputs(self):
        return (TensorSpec(NETWORK_OUTPUTS[self.name][0], FLOAT, ("B", self.model.vae.config.out_channels, "H", "W")),)

    def build(self, model):
        return VaeDecoderNet(model.vae, model.fidelity)


DESCRIPTORS: dict[str, type[NetworkDescriptor]] = {
    cls.name: cls
    for cls in (TextEncoderDescriptor, DenoiserDescriptor, GuidedDenoiserDescriptor, UnetDescriptor,
                AdaptorDescriptor, VaeEncoderDescriptor, VaeDecoderDescriptor)
}
# What the pipeline runs (spire_rt.models.networks); `unet` + `adaptor` are the split form for engines that want
# the adaptor at its own cadence.
PIPELINE_NETWORKS = tuple(name for name in DESCRIPTORS if name in NETWORK_INPUTS)
ALL_NETWORKS = tuple(DESCRIPTORS)


def descriptor(network: str, model: SpireModel, profile: ShapeProfile) -> NetworkDescriptor:
    try:
        return DESCRIPTORS[network](model, profile)
    except KeyError:
        raise OptionError(f"unknown network {network!r}; known: {', '.join(DESCRIPTORS)}") from None


def parse_networks(text: str | None) -> tuple[str, ...]:
    """`--networks a,b` / `all` / `pipeline` (the default) -> network names in export order."""
    if text is None or text == "pipeline":
        return PIPELINE_NETWORKS
    if text == "all":
        return ALL_NETWORKS
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in DESCRIPTORS]
    if unknown or not names:
        raise OptionError(f"unknown network(s) {', '.join(unknown) or repr(text)}; use 'all', 'pipeline' or a "
                          f"comma list of {', '.join(DESCRIPTORS)}")
    return names
