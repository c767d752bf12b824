"""Training data, offline: scikit-image's bundled photographs plus procedural dead-leaves images.

    images = TrainingImages.load(rng)            # the skimage photos (minus HELD_OUT) and a dead-leaves pool
    clean = images.crops(rng, batch=16, size=96) # [B, 3, size, size] in [0, 1], random crops and flips
                                                 # (and RGB orders, with TrainingImages.load(rgb_permute=R))
    y, prompts = degraded_pairs(clean, rng)      # SPIRE's two-stage degradation, y resized back to the clean size
    batches = worker_batches(images, BatchPlan(64, 64, degraded=64), seed=(0, 0), workers=6)
                                                 # the same, drawn by worker processes beside a GPU training loop

Dead leaves (Matheron 1968; Lee, Mumford & Huang 2001, "Occlusion models for natural images"): opaque discs
dropped front to back with a power-law radius density p(r) ~ r^-3, which gives the scale invariance and the
1/f^2 power spectrum of natural images.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..degrade import Sampler, degrade, sample_params, sample_single_params
from ..prompts import BLIND_PROMPT
from ..staging import staged_file

# Held out for evaluation (chelsea is the README's example image, so it must never be trained on).
HELD_OUT = ("astronaut", "chelsea", "coffee", "rocket")
# The photographic images of skimage.data (grey ones are expanded to RGB); synthetic charts, binary shapes and
# the deliberately motion-blurred clock are left out.
TRAIN_IMAGES = ("brick", "camera", "cell", "coins", "color", "grass", "gravel", "hubble_deep_field", "ihc",
                "moon", "motorcycle_left", "motorcycle_right", "page", "retina", "text")
# Training photographs `spire-rt eval --images skimage-validation` scores, to choose settings (the default
# strength) without looking at the held-out set.
VALIDATION = ("camera", "coins", "ihc", "motorcycle_left")
BLIND_RATE = 0.2  # how often the restoration prompt is replaced by "Remove all degradation"
# The five RGB orders other than the identity. Permuting a photograph's channels keeps its edges, textures and the
# way its colours follow its luma, while moving its hues around the colour wheel: 9 of the 15 training photographs
# are grey, and most of the six colour ones lean to reds and browns (Yoo, Ahn & Sohn, "Rethinking Data
# Augmentation for Image Super-resolution", CVPR 2020: "RGB permute").
RGB_ORDERS = tuple(list(order) for order in itertools.permutations(range(3)))[1:]


def skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).resolve().parent / "data"


def load_skimage_image(name: str) -> np.ndarray:
    """One bundled image as float32 H x W x 3 in [0, 1]."""
    folder = skimage_data_dir()
    matches = [p for p in folder.iterdir() if p.stem == name and p.suffix.lower() in (".png", ".jpg")]
    if not matches:
        raise FileNotFoundError(f"skimage.data has no image named {name!r} in {folder}")
    with Image.open(matches[0]) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return pixels


def dead_leaves(rng: np.random.Generator, size: int = 256, r_min: float = 1.5, r_max: float = 80.0,
                max_discs: int = 20000) -> np.ndarray:
    """A dead-leaves image, float32 size x size x 3: discs painted front to back until the canvas is covered."""
    image = np.zeros((size, size, 3), np.float32)
    free = np.ones((size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Inverse-CDF draw from p(r) ~ r^-3 on [r_min, r_max].
    u = rng.random(max_discs)
    radii = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5
    base = rng.random((max_discs, 3)).astype(np.float32) ** 1.5
    grey = rng.random(max_discs) < 0.3
    base[grey] = base[grey, :1]
    for index in range(max_discs):
        r = radii[index]
        cy, cx = rng.uniform(-r, size + r, 2)
        y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        mask = ((yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r) & free[y0:y1, x0:x1]
        if not mask.any():
            continue
        colour = base[index]
        texture = rng.random()
        if texture < 0.3:  # a linear shading across the disc
            angle = rng.uniform(0, 2 * np.pi)
            ramp = ((yy[y0:y1, x0:x1] - cy) * np.sin(angle) + (xx[y0:y1, x0:x1] - cx) * np.cos(angle)) / r
            patch = colour + 0.15 * ramp[..., None]
        elif texture < 0.45:  # stripes
            angle, period = rng.uniform(0, 2 * np.pi), rng.uniform(3, 12)
            phase = (yy[y0:y1, x0:x1] * np.sin(angle) + xx[y0:y1, x0:x1] * np.cos(angle)) * 2 * np.pi / period
            patch = colour + 0.12 * np.sin(phase)[..., None]
        else:
            patch = np.broadcast_to(colour, (*mask.shape, 3))
        image[y0:y1, x0:x1][mask] = patch[mask]
        free[y0:y1, x0:x1] &= ~mask
        if index % 64 == 0 and not free.any():
            break
    image[free] = rng.random(3)
    if rng.random() < 0.5:  # real photographs are rarely pixel-sharp
        from scipy.ndimage import gaussian_filter

        image = gaussian_filter(image, sigma=(rng.uniform(0.3, 1.0),) * 2 + (0,))
    return np.clip(image, 0, 1).astype(np.float32)


def dead_leaves_pool(count: int, seed: int = 0, size: int = 256, cache: str | Path | None = None,
                     processes: int = 1) -> np.ndarray:
    """`count` dead-leaves images [N, size, size, 3], cached as .npy (each takes a few hundred ms). Image i is
    drawn from its own seed (seed, i), so the pool is the same however many processes make it."""
    if cache is not None:
        # "v2": pools before per-image seeds were drawn from one stream; an old cache file is not this pool.
        cache = Path(cache) / f"dead_leaves_v2_{count}_{seed}_{size}.npy"
        if cache.exists():
            return np.load(cache)
    jobs = [(seed, index, size) for index in range(count)]
    if processes > 1 and count > 1:
        with multiprocessing.get_context("fork").Pool(min(processes, count)) as pool:
            images = pool.map(seeded_dead_leaves, jobs)
    else:
        images = [seeded_dead_leaves(job) for job in jobs]
    pool = np.stack(images) if images else np.zeros((0, size, size, 3), np.float32)
    if cache is not None:
        with staged_file(cache) as staging:  # whole or not at all: a cut-off write would be loaded next time
            np.save(staging, pool)
    return pool


def seeded_dead_leaves(job: tuple[int, int, int]) -> np.ndarray:
    seed, index, size = job
    return dead_leaves(np.random.default_rng([seed, index]), size)


class TrainingImages:
    """The training photographs and dead-leaves images; draws random crops with flips and 90-degree turns, and
    with `rgb_permute` that share of them in another RGB order (RGB_ORDERS)."""

    def __init__(self, photos: list[np.ndarray], leaves: np.ndarray, photo_rate: float = 0.6,
                 rgb_permute: float = 0.0):
        if not 0 <= rgb_permute <= 1:
            raise ValueError(f"rgb_permute must be in [0, 1], got {rgb_permute}")
        self.photos = photos
        self.leaves = leaves
        self.photo_rate = photo_rate
        self.rgb_permute = rgb_permute

    @classmethod
    def load(cls, leaves: int = 256, seed: int = 0, cache: str | Path | None = None,
             processes: int = 1, rgb_permute: float = 0.0) -> TrainingImages:
        photos = [load_skimage_image(name) for name in TRAIN_IMAGES]
        cache = cache if cache is not None else os.environ.get("SPIRE_DATA_CACHE")
        pool = dead_leaves_pool(leaves, seed, cache=cache, processes=processes) if leaves else np.zeros((0, 1, 1, 3))
        return cls(photos, pool, rgb_permute=rgb_permute)

    def crop(self, rng: np.random.Generator, size: int) -> np.ndarray:
        use_photo = len(self.leaves) == 0 or rng.random() < self.photo_rate
        if use_photo:
            image = self.photos[rng.integers(len(self.photos))]
            # A random zoom-out (area average) adds scale variety and averages away the source's own noise.
            zoom = rng.uniform(1.0, 2.0) if min(image.shape[:2]) >= 2 * size else 1.0
            if zoom > 1.0:
                side = int(size * zoom)
                y0, x0 = rng.integers(0, image.shape[0] - side + 1), rng.integers(0, image.shape[1] - side + 1)
                patch = Image.fromarray(np.round(image[y0:y0 + side, x0:x0 + side] * 255).astype(np.uint8))
                image = np.asarray(patch.resize((size, size), Image.Resampling.BOX), np.float32) / 255.0
        else:
            image = self.leaves[rng.integers(len(self.leaves))]
        y0, x0 = rng.integers(0, image.shape[0] - size + 1), rng.integers(0, image.shape[1] - size + 1)
        patch = image[y0:y0 + size, x0:x0 + size]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        patch = np.rot90(patch, k=int(rng.integers(4)))
        if self.rgb_permute and rng.random() < self.rgb_permute:  # rate 0 leaves the stream as it was
            patch = patch[..., RGB_ORDERS[rng.integers(len(RGB_ORDERS))]]
        return np.ascontiguousarray(patch, dtype=np.float32)

    def crops(self, rng: np.random.Generator, batch: int, size: int) -> torch.Tensor:
        """[batch, 3, size, size] in [0, 1]."""
        return torch.from_numpy(np.stack([self.crop(rng, size) for _ in range(batch)])).permute(0, 3, 1, 2)


def degraded_pair(clean: np.ndarray, seed: int, sampler: Sampler = sample_params) -> tuple[np.ndarray, str]:
    """y at the clean image's size (as the pipeline resizes y to the output size) and its restoration prompt."""
    from ..pipeline import resize

    degraded, params = degrade(clean, seed=seed, sampler=sampler)
    y = torch.from_numpy(degraded).permute(2, 0, 1)[None]
    y = resize(y, clean.shape[:2])[0].permute(1, 2, 0).numpy()
    return y, str(params.prompt())


def degraded_pairs(clean: torch.Tensor, rng: np.random.Generator, blind_rate: float = BLIND_RATE,
                   single_rate: float = 0.0, single_weights: tuple[float, ...] | None = None
                   ) -> tuple[torch.Tensor, list[str]]:
    """Degrade each image of `clean` [B, 3, H, W]: a single operation with probability `single_rate` (drawn in
    proportion to `single_weights`, else equally), else the two-stage draw; the prompt is the blind one with
    probability `blind_rate`."""
    single_sampler = partial(sample_single_params, weights=single_weights)
    ys, prompts = [], []
    for image in clean.permute(0, 2, 3, 1).numpy():
        single = single_rate > 0 and bool(rng.random() < single_rate)  # rate 0 leaves the stream as it was
        sampler = single_sampler if single else sample_params
        y, prompt = degraded_pair(image, seed=int(rng.integers(2**31)), sampler=sampler)
        ys.append(y)
        prompts.append(BLIND_PROMPT if rng.random() < blind_rate else prompt)
    return torch.from_numpy(np.stack(ys)).permute(0, 3, 1, 2).contiguous(), prompts


@dataclass(frozen=True)
class BatchPlan:
    """What one training step draws: `batch` clean crops of side `crop`; the first `degraded` of them also get a
    degraded pair and its prompt (`single_rate` of those degraded by one operation, drawn in proportion to
    `single_weights`, and `blind_rate` of them prompted "Remove all degradation", as in degraded_pairs)."""

    batch: int
    crop: int
    degraded: int = 0
    single_rate: float = 0.0
    single_weights: tuple[float, ...] | None = None
    blind_rate: float = BLIND_RATE

    def draw(self, images: TrainingImages, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(clean [batch, 3, crop, crop], y [degraded, 3, crop, crop], prompts), on the CPU."""
        clean = images.crops(rng, self.batch, self.crop)
        if not self.degraded:
            return clean, clean[:0], []
        y, prompts = degraded_pairs(clean[:self.degraded], rng, blind_rate=self.blind_rate,
                                    single_rate=self.single_rate, single_weights=self.single_weights)
        return clean, y, prompts


class BatchStream(torch.utils.data.IterableDataset):
    """Endless batches of a plan, one random stream per DataLoader worker, seeded (*seed, worker id)."""

    def __init__(self, images: TrainingImages, plan: BatchPlan, seed: tuple[int, ...]):
        self.images, self.plan, self.seed = images, plan, tuple(seed)

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        torch.set_num_threads(1)  # each worker is one of many processes sharing the cores
        rng = np.random.default_rng([*self.seed, worker.id if worker is not None else 0])
        while True:
            yield self.plan.draw(self.images, rng)


def worker_batches(images: TrainingImages, plan: BatchPlan, seed: tuple[int, ...], workers: int) -> Iterator:
    """Batches drawn by `workers` processes beside the training loop: the crops and, above all, the degradations
    (a few ms per image on one core) would otherwise leave a GPU waiting on a single CPU core."""
    loader = torch.utils.data.DataLoader(BatchStream(images, plan, seed), batch_size=None, num_workers=workers,
                                         collate_fn=as_drawn, prefetch_factor=4)
    return iter(loader)


def as_drawn(batch):
    """The DataLoader's collate step, a no-op: a plan already draws whole batches."""
    return batch
