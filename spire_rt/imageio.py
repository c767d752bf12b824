"""Reading and writing images safely: any common mode in, the same kind of image out, nothing half-written.

Inputs are split into float RGB in [0, 1] (what the networks see), an optional alpha channel (carried through
and resized, not restored) and how to put the result back: grey stays grey, 16-bit stays 16-bit where the
output format can hold it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ImageError
from .staging import staged_file

# Far above any photo, far below what would exhaust memory: PIL raises past twice this.
MAX_INPUT_PIXELS = 64 * 1024 * 1024
IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


@dataclass(frozen=True)
class ImageKind:
    grey: bool = False
    bits: int = 8


@dataclass
class SplitImage:
    rgb: np.ndarray  # float32 HxWx3 in [0, 1]
    alpha: np.ndarray | None  # float32 HxW in [0, 1]
    kind: ImageKind


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image, turning every way it can fail into one ImageError line."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS
            with Image.open(path) as image:
                image.load()
                return image.copy() if image.mode != "P" else image.convert("RGBA")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{path}: larger than {MAX_INPUT_PIXELS // 2**20} megapixels (decompression bomb?)") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{path}: not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path}: cannot decode ({error})") from None


def split_image(image: Image.Image | np.ndarray) -> SplitImage:
    """PIL image or array (HxW, HxWx3, HxWx4; uint8, uint16 or float in [0, 1]) -> float RGB + alpha + kind."""
    array, kind = to_array(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or min(array.shape[:2]) < 1:
        raise ImageError(f"image of shape {array.shape} is not HxW, HxWx3 or HxWx4")
    channels = array.shape[2]
    alpha = array[:, :, -1] if channels in (2, 4) else None
    colour = array[:, :, :1].repeat(3, axis=2) if channels in (1, 2) else array[:, :, :3]
    grey = kind.grey or channels in (1, 2)
    return SplitImage(np.ascontiguousarray(colour, dtype=np.float32), alpha, ImageKind(grey, kind.bits))


def to_array(image: Image.Image | np.ndarray) -> tuple[np.ndarray, ImageKind]:
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            return image.astype(np.float32) / 255, ImageKind(bits=8)
        if image.dtype == np.uint16:
            return image.astype(np.float32) / 65535, ImageKind(bits=16)
        if np.issubdtype(image.dtype, np.floating):
            if not np.isfinite(image).all():
                raise ImageError("image array holds NaN or infinity")
            return np.clip(image.astype(np.float32), 0, 1), ImageKind(bits=8)
        raise ImageError(f"image array of dtype {image.dtype} is not uint8, uint16 or float")
    if not isinstance(image, Image.Image):
        raise ImageError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey PNGs open as I;16 or I; values are 0..65535 either way.
        grey = np.asarray(image, dtype=np.float32) / 65535
        return np.clip(grey, 0, 1), ImageKind(grey=True, bits=16)
    if image.mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0, 1), ImageKind(grey=True)
    if image.mode in ("1", "L"):
        return np.asarray(image.convert("L"), dtype=np.float32) / 255, ImageKind(grey=True)
    if image.mode == "LA":
        return np.asarray(image, dtype=np.float32) / 255, ImageKind(grey=True)
    has_alpha = image.mode in ("RGBA", "PA", "La") or "transparency" in image.info
    converted = image.convert("RGBA" if has_alpha else "RGB")
    return np.asarray(converted, dtype=np.float32) / 255, ImageKind()


def merge_image(rgb: np.ndarray, alpha: np.ndarray | None, kind: ImageKind) -> Image.Image:
    """The inverse of split_image: float RGB (+ alpha) back to a PIL image of the input's kind."""
    rgb = np.clip(rgb, 0, 1)
    if kind.grey:
        # ITU-R BT.601 luma, as PIL's own RGB->L conversion.
        grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if kind.bits == 16 and alpha is None:
            return Image.fromarray(np.round(grey * 65535).astype(np.uint16))
        planes = [grey] if alpha is None else [grey, alpha]
        mode = "L" if alpha is None else "LA"
    else:
        planes = [rgb[:, :, i] for i in range(3)] + ([] if alpha is None else [np.clip(alpha, 0, 1)])
        mode = "RGB" if alpha is None else "RGBA"
    stacked = np.stack(planes, axis=2) if len(planes) > 1 else planes[0]
    return Image.fromarray(np.round(stacked * 255).astype(np.uint8), mode)


def check_output_path(path: str | Path, overwrite: bool) -> Path:
    """Refuse before any work is done: an unknown format, an existing file, a missing or read-only folder."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageError(f"{path}: unknown output format; use one of {', '.join(IMAGE_SUFFIXES)}")
    if path.exists() and not overwrite:
        raise ImageError(f"{path}: already exists (pass --overwrite to replace it)")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ImageError(f"{folder}: output folder does not exist")
    if not os.access(folder, os.W_OK):
        raise ImageError(f"{folder}: output folder is not writable")
    return path


def save_image(image: Image.Image, path: str | Path, overwrite: bool = False) -> Path:
    """Write through a temporary file in the same folder and rename it into place, so no reader ever sees
    a half-written image and an existing file is only replaced by a complete one."""
    path = check_output_path(path, overwrite)
    image_format = IMAGE_SUFFIXES[path.suffix.lower()]
    if image_format == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("L" if image.mode in ("LA", "I;16") else "RGB")
    if image_format == "WEBP" and image.mode == "I;16":
        image = image.convert("L")
    save_options = {"quality": 95} if image_format in ("JPEG", "WEBP") else {}
    try:
        with staged_file(path) as staging:
            image.save(staging, format=image_format, **save_options)
    except OSError as error:
        raise ImageError(f"{path}: cannot write ({error})") from None
    return path
