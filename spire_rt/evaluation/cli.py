"""`spire-rt eval`: benchmark a model on a folder of clean images, or (--sweep) measure its prompt response.

`--images skimage-heldout` (the default) uses the four photographs held out of training
(spire_rt.training.data.HELD_OUT), read from scikit-image's bundled data.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import ImageError, SpireError
from ..staging import staged_file

HELDOUT_IMAGES = "skimage-heldout"
VALIDATION_IMAGES = "skimage-validation"  # training photographs: for choosing settings without the held-out set
SWEEP_FILES = ("sweep.json", "sweep.png")


def register(commands) -> None:
    parser = commands.add_parser("eval", help="benchmark a model (PSNR/SSIM per degradation family) or --sweep")
    parser.add_argument("--model", default="tiny", help="preset name or SPIRE model folder (default tiny)")
    parser.add_argument("--images", default=HELDOUT_IMAGES,
                        help=f"folder of clean images, {HELDOUT_IMAGES} (the photographs held out of training) or "
                             f"{VALIDATION_IMAGES} (four training photographs, for choosing settings)")
    parser.add_argument("--out", required=True, help="folder for results.md, results.json and the PNGs")
    parser.add_argument("--seed", type=int, default=0, help="seeds the degradations and the sampler")
    parser.add_argument("--sweep", action="store_true",
                        help="run the controllability sweep instead of the benchmark")
    parser.add_argument("--sweep-image", help="image name (stem) for the sweep (default: the first image)")
    parser.add_argument("--families", nargs="+", help="benchmark only these families")
    parser.add_argument("--mixed-draws", type=int, default=1, metavar="N",
                        help="score the first N two-stage draws per image in the mixed families (default 1, the "
                             "issue's benchmark; more make a comparison of two models on few images steadier)")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the model's own, else RestoreOptions')")
    parser.add_argument("--sampler", help="sampler (default: the model's own, else RestoreOptions')")
    parser.add_argument("--strength", type=float, help="SDEdit strength (default: the model's own, else RestoreOptions')")
    parser.add_argument("--start-noise", type=float,
                        help="noise scale at the SDEdit start (default: the model's own, else RestoreOptions')")
    parser.add_argument("--adaptor-strength", type=float, help="adaptor strength (default: the model's own, else RestoreOptions')")
    parser.add_argument("--color-fix", help="colour fix (default: the model's own, else RestoreOptions')")
    parser.add_argument("--ensemble", type=int,
                        help="self-ensemble members, 1-4 (default: the model's own, else RestoreOptions')")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier eval in --out (otherwise refused)")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(run=run_eval)


def load_images(spec: str) -> dict:
    import numpy as np
    from PIL import Image

    from ..imageio import IMAGE_SUFFIXES

    if spec in (HELDOUT_IMAGES, VALIDATION_IMAGES):
        from ..training.data import HELD_OUT, VALIDATION, load_skimage_image

        return {name: load_skimage_image(name) for name in (HELD_OUT if spec == HELDOUT_IMAGES else VALIDATION)}
    folder = Path(spec)
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder (give a folder of clean images, {HELDOUT_IMAGES} or {VALIDATION_IMAGES})")
    images = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            with Image.open(path) as image:
                images[path.stem] = np.asarray(image.convert("RGB"), np.float32) / 255.0
    if not images:
        raise ImageError(f"{folder}: no images")
    return images


def run_eval(args) -> int:
    from dataclasses import asdict

    from tqdm import tqdm

    from ..models.spire_model import RESTORE_DEFAULT_KEYS
    from ..pipeline import RestoreOptions, Restorer
    from .benchmark import (
        FAMILIES,
        RESULT_FILES,
        grid_file,
        markdown_table,
        run_benchmark,
        save_grids,
        summarise,
        write_results,
    )
    from .sweep import run_sweep, save_strip

    families = tuple(args.families or FAMILIES)
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise SpireError(f"unknown families {', '.join(sorted(unknown))}; use {', '.join(FAMILIES)}")
    # The sampling options eval has a flag for (all of RESTORE_DEFAULT_KEYS but guidance: no semantic prompt).
    chosen = {name: getattr(args, name, None) for name in RESTORE_DEFAULT_KEYS}
    options = {k: v for k, v in chosen.items() if v is not None}
    options["seed"] = args.seed
    RestoreOptions(**options).validated()  # bad options fail before anything is loaded or written
    if args.mixed_draws < 1:
        raise SpireError(f"--mixed-draws must be 1 or more, got {args.mixed_draws}")
    if args.sweep and args.mixed_draws != 1:
        raise SpireError("--mixed-draws applies to the benchmark, not to --sweep")
    out = Path(args.out)
    written = SWEEP_FILES if args.sweep else (*RESULT_FILES, *map(grid_file, families))
    earlier = [name for name in written if (out / name).exists()]
    if earlier and not args.overwrite:
        raise SpireError(f"{out} already holds {', '.join(earlier)} from an earlier eval; give another --out, "
                         "or --overwrite to replace them")
    images = load_images(args.images)
    out.mkdir(parents=True, exist_ok=True)  # only once the options and images are known to be good
    restorer = Restorer.from_pretrained(args.model, backend=args.backend, device=args.device)
    resolved = asdict(restorer.resolve(options))  # with the model's restore_defaults
    resolved = {k: resolved[k] for k in (*RESTORE_DEFAULT_KEYS, "seed")}  # the sampling, without the prompts
    info = {"model": str(args.model), "trained": restorer.model.trained, "images": sorted(images),
            "seed": args.seed, "options": resolved, "mixed_draws": args.mixed_draws}

    if args.sweep:
        name = args.sweep_image or min(images)
        if name not in images:
            raise SpireError(f"--sweep-image {name!r}: not among {', '.join(sorted(images))}")
        record, strips = run_sweep(restorer, images[name], options, seed=args.seed)
        sweep_json, sweep_png = SWEEP_FILES
        with staged_file(out / sweep_json) as staging:
            staging.write_text(json.dumps({**info, "image": name, "sweeps": record}, indent=2) + "\n",
                               encoding="utf-8")
        save_strip(strips, out / sweep_png)
        for sweep, entry in record.items():
            print(f"{sweep}: Spearman rho {entry['spearman_rho']:+.3f} (expected sign {entry['expected_sign']:+d})"
                  f"  hf energy {' '.join(f'{e:.2e}' for e in entry['hf_energy'])}")
        return 0

    started = time.perf_counter()
    with tqdm(desc="eval", unit="case", disable=args.quiet) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        records, outputs = run_benchmark(restorer, images, options, seed=args.seed, families=families,
                                         progress=progress, mixed_draws=args.mixed_draws)
    summary = summarise(records)
    info["wall_s"] = round(time.perf_counter() - started, 1)
    write_results(out, records, summary, info)
    save_grids(outputs, out)
    print(markdown_table(summary), end="")
    return 0
