"""SPIRE's networks: presets, the modulated adaptor, the modulated UNet forward, and model folders."""

import os

from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

# Loading chatter (missing accelerate, shard progress bars) is noise in a CLI and in test logs.
diffusers_logging.set_verbosity_error()
diffusers_logging.disable_progress_bar()
transformers_logging.set_verbosity_error()
transformers_logging.disable_progress_bar()
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .adaptor import SpireAdaptor, init_adaptor_from_unet
from .modulated_unet import modulate, unet_forward_modulated
from .presets import PRESETS, get_preset
from .spire_model import SpireModel, build_preset, load_model

__all__ = ["PRESETS", "SpireAdaptor", "SpireModel", "build_preset", "get_preset", "init_adaptor_from_unet",
           "load_model", "modulate", "unet_forward_modulated"]
