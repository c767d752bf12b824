"""A SPIRE model's parts, how a preset builds them, and how they load from and save to diffusers-style folders.

    SPIRE folder:   spire.json  unet/  controlnet/  vae/  text_encoder/  tokenizer/  scheduler/  [fidelity/]
    base + adaptor: a Stable Diffusion folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
                    scheduler/) plus an adaptor folder (controlnet/ inside it, or the controlnet folder itself)

Weights are safetensors; nothing is fetched from a hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .. import __version__
from ..errors import ModelLoadError, OptionError
from ..staging import staged_folder
from .adaptor import SpireAdaptor, check_supported_unet, init_adaptor_from_unet
from .fidelity import FidelityBranch, check_fits
from .networks import DenoiserNet, TextEncoderNet, VaeDecoderNet, VaeEncoderNet
from .presets import PRESETS, get_preset
from .tokenizer import MAX_LENGTH, build_grammar_tokenizer

SPIRE_FILE = "spire.json"
# Options a model may recommend in spire.json "restore_defaults": the sampling it was trained for.
RESTORE_DEFAULT_KEYS = ("steps", "sampler", "strength", "start_noise", "guidance", "adaptor_strength",
                        "color_fix", "ensemble")
SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"

# What each component folder must hold, checked before loading so a missing file gets a message naming it.
REQUIRED_FILES = {
    "unet": ("config.json", "diffusion_pytorch_model.safetensors"),
    "controlnet": ("config.json", "diffusion_pytorch_model.safetensors"),
    "vae": ("config.json", "diffusion_pytorch_model.safetensors"),
    "text_encoder": ("config.json", "model.safetensors"),
    "tokenizer": ("vocab.json", "merges.txt"),  # tokenizer.json alone also loads: see load_component
    "scheduler": ("scheduler_config.json",),
    "fidelity": ("config.json", "diffusion_pytorch_model.safetensors"),
}


@dataclass
class SpireModel:
    unet: UNet2DConditionModel
    controlnet: SpireAdaptor
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict
    name: str
    text_layer: str = "last"
    trained: bool = True
    # The restoration options this model was trained for (e.g. one step at strength 0.2); a caller's own
    # options win, and RestoreOptions supplies the rest.
    restore_defaults: dict = field(default_factory=dict)
    # The decoder's optional fidelity branch (fidelity.py): present when the folder has fidelity/.
    fidelity: FidelityBranch | None = None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's downsampling times the UNet's."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def max_text_length(self) -> int:
        return min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)

    def networks(self) -> dict[str, nn.Module]:
        """The traceable networks the backends run (see networks.py), sharing this model's modules."""
        return {
            "text_encoder": TextEncoderNet(self.text_encoder, self.text_layer),
            "denoiser": DenoiserNet(self.unet, self.controlnet, guided=False),
            "denoiser_guided": DenoiserNet(self.unet, self.controlnet, guided=True),
            "vae_encoder": VaeEncoderNet(self.vae),
            "vae_decoder": VaeDecoderNet(self.vae, self.fidelity),
        }

    def modules(self) -> dict[str, nn.Module]:
        modules = {"unet": self.unet, "controlnet": self.controlnet, "vae": self.vae, "text_encoder": self.text_encoder}
        if self.fidelity is not None:
            modules["fidelity"] = self.fidelity
        return modules

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write a whole SPIRE folder. Written beside the target first, so an interrupted save leaves nothing."""
        folder = Path(folder)
        if folder.exists() and not overwrite:
            raise ModelLoadError(f"{folder} already exists (pass overwrite=True to replace it)")
        with staged_folder(folder) as staging:
            for name, module in self.modules().items():
                module.save_pretrained(staging / name, safe_serialization=True)
            self.tokenizer.save_pretrained(staging / "tokenizer")
            # transformers 5 writes only tokenizer.json; the CLIP-format files keep the folder readable by any
            # CLIP tokenizer (and by older transformers).
            self.tokenizer.backend_tokenizer.model.save(str(staging / "tokenizer"))
            (staging / "scheduler").mkdir()
            write_json(staging / "scheduler" / "scheduler_config.json", self.scheduler_config)
            info = {"format": "spire", "format_version": 1, "name": self.name, "text_layer": self.text_layer,
                    "trained": self.trained, "written_by": f"spire-rt {__version__}"}
            if self.restore_defaults:
                info["restore_defaults"] = checked_restore_defaults(self.restore_defaults, folder)
            write_json(staging / SPIRE_FILE, info)
        return folder


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_preset(name: str, seed: int | None = None) -> SpireModel:
    """The preset's architecture with seeded random weights and an identity (zero-head) adaptor."""
    preset = get_preset(name)
    tokenizer = build_grammar_tokenizer()
    special_ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                   "pad_token_id": tokenizer.pad_token_id}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(preset.seed if seed is None else seed)
        unet = UNet2DConditionModel(**preset.unet)
        vae = AutoencoderKL(**preset.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**preset.text_encoder, **special_ids))
    if len(tokenizer) > text_encoder.config.vocab_size:
        raise ModelLoadError(f"preset {name}: tokenizer has {len(tokenizer)} tokens, more than the text encoder's "
                             f"{text_encoder.config.vocab_size}")
    tokenizer.model_max_length = min(MAX_LENGTH, preset.tokenizer_max_length)
    return SpireModel(unet=unet, controlnet=init_adaptor_from_unet(unet), vae=vae, text_encoder=text_encoder,
                      tokenizer=tokenizer, scheduler_config=dict(preset.scheduler), name=name,
                      text_layer=preset.text_layer, trained=False)


def shipped_folder(preset: str) -> Path | None:
    """The folder of the weights shipped for `preset`, or None where it ships none (architecture only)."""
    folder = SHIPPED_WEIGHTS / preset
    return folder if (folder / SPIRE_FILE).exists() else None


def load_model(name_or_path: str | Path, adaptor: str | Path | None = None) -> SpireModel:
    """A preset name, a SPIRE folder, or a base Stable Diffusion folder together with an adaptor folder."""
    path = Path(name_or_path)
    if not path.exists() and str(name_or_path) in PRESETS:
        shipped = shipped_folder(str(name_or_path))
        return load_folder(shipped) if shipped is not None else build_preset(str(name_or_path))
    if not path.is_dir():
        raise ModelLoadError(f"{name_or_path}: neither a preset ({', '.join(sorted(PRESETS))}) nor a model folder")
    if adaptor is not None:
        return load_base_with_adaptor(path, Path(adaptor))
    if (path / SPIRE_FILE).exists():
        return load_folder(path)
    if (path / "model_index.json").exists():
        raise ModelLoadError(f"{path} is a base Stable Diffusion folder; give the SPIRE adaptor folder too "
                             "(--adaptor DIR)")
    raise ModelLoadError(f"{path}: no {SPIRE_FILE} (SPIRE folder) or model_index.json (base SD folder) found")


def load_folder(folder: Path) -> SpireModel:
    info = read_json(folder / SPIRE_FILE)
    parts = load_base_parts(folder)
    controlnet = load_component(folder / "controlnet", "controlnet")
    return SpireModel(controlnet=controlnet, name=info.get("name", folder.name),
                      text_layer=info.get("text_layer", "last"), trained=bool(info.get("trained", True)),
                      restore_defaults=checked_restore_defaults(info.get("restore_defaults", {}), folder),
                      fidelity=load_fidelity(folder, parts["vae"]), **parts)


def load_fidelity(folder: Path, vae: AutoencoderKL) -> FidelityBranch | None:
    """The folder's fidelity/ branch, checked against its VAE, or None where it has none."""
    if not (folder / "fidelity").exists():
        return None
    branch = load_component(folder / "fidelity", "fidelity")
    try:
        check_fits(branch, vae)
    except ModelLoadError as error:
        raise ModelLoadError(f"{folder / 'fidelity'}: {error}") from None
    return branch


def load_base_with_adaptor(base: Path, adaptor: Path) -> SpireModel:
    parts = load_base_parts(base)
    adaptor_folder = adaptor / "controlnet" if (adaptor / "controlnet").is_dir() else adaptor
    controlnet = load_component(adaptor_folder, "controlnet")
    info = read_json(adaptor / SPIRE_FILE) if (adaptor / SPIRE_FILE).exists() else {}
    return SpireModel(controlnet=controlnet, name=info.get("name", adaptor.name),
                      text_layer=info.get("text_layer", "last"), trained=True,
                      restore_defaults=checked_restore_defaults(info.get("restore_defaults", {}), adaptor),
                      fidelity=load_fidelity(adaptor, parts["vae"]), **parts)


def checked_restore_defaults(defaults, where: Path) -> dict:
    """spire.json's "restore_defaults": a mapping of known option names (values are checked when options are)."""
    if not isinstance(defaults, dict):
        raise ModelLoadError(f"{where / SPIRE_FILE}: restore_defaults must be a mapping, got {type(defaults).__name__}")
    unknown = sorted(set(defaults) - set(RESTORE_DEFAULT_KEYS))
    if unknown:
        raise ModelLoadError(f"{where / SPIRE_FILE}: restore_defaults has unknown options {', '.join(unknown)}; "
                             f"allowed: {', '.join(RESTORE_DEFAULT_KEYS)}")
    from ..pipeline import RestoreOptions  # here: the pipeline imports this module

    try:
        RestoreOptions(**defaults).validated()
    except (OptionError, TypeError) as error:
        raise ModelLoadError(f"{where / SPIRE_FILE}: restore_defaults: {error}") from None
    return dict(defaults)


def load_base_parts(folder: Path) -> dict:
    unet = load_component(folder / "unet", "unet")
    check_supported_unet(unet.config)
    return {
        "unet": unet,
        "vae": load_component(folder / "vae", "vae"),
        "text_encoder": load_component(folder / "text_encoder", "text_encoder"),
        "tokenizer": load_component(folder / "tokenizer", "tokenizer"),
        "scheduler_config": read_json(folder / "scheduler" / "scheduler_config.json"),
    }


LOADERS = {
    "unet": UNet2DConditionModel.from_pretrained,
    "controlnet": SpireAdaptor.from_pretrained,
    "vae": AutoencoderKL.from_pretrained,
    "text_encoder": CLIPTextModel.from_pretrained,
    "tokenizer": CLIPTokenizer.from_pretrained,
    "fidelity": FidelityBranch.from_pretrained,
}


def load_component(folder: Path, kind: str):
    fast_tokenizer = kind == "tokenizer" and (folder / "tokenizer.json").is_file()
    for filename in () if fast_tokenizer else REQUIRED_FILES[kind]:
        if not (folder / filename).is_file():
            raise ModelLoadError(f"{folder / filename}: missing ({kind} needs {', '.join(REQUIRED_FILES[kind])})")
    try:
        component = LOADERS[kind](str(folder), local_files_only=True)
    except Exception as error:  # the libraries raise many types for a corrupt file; all mean the same here
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"{folder}: cannot load {kind}: {reason}") from error
    if isinstance(component, nn.Module):
        component.eval().requires_grad_(False)
    return component


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: missing") from None
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{path}: not readable JSON ({error})") from None
