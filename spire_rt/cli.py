"""The `spire-rt` command: restore, degrade, info.

Every restoration option and default comes from `RestoreOptions`, so the CLI cannot drift from the library.
User errors end with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import sys
from dataclasses import fields
from pathlib import Path

from . import __version__
from .errors import ImageError, SpireError
from .imageio import IMAGE_SUFFIXES, check_output_path, load_image, merge_image, save_image, split_image
from .prompts import PromptError

EXIT_USAGE = 2
# Modules with `register(subparsers)` that add a sub-command whose parser sets `run=function(args) -> int`.
PLUGGED_COMMANDS: tuple[str, ...] = ("spire_rt.training.cli", "spire_rt.evaluation.cli", "spire_rt.export.cli",
                                     "spire_rt.bench.cli")

OPTION_HELP = {
    "restore": "restoration prompt, e.g. 'Deblur with sigma 1.5; Denoise with sigma 0.06'",
    "prompt": "semantic prompt: what the picture shows (empty: none)",
    "steps": "sampler steps",
    "sampler": "sampler",
    "guidance": "classifier-free guidance scale on the semantic prompt (used when --prompt is given)",
    "strength": "start from the degraded image noised to this fraction of the schedule (1: pure noise)",
    "start_noise": "with --strength below 1, the scale of the noise added to the degraded latent (0: none)",
    "adaptor_strength": "scale s of the adaptor's modulation (0: the frozen prior alone)",
    "seed": "random seed (None: a fresh one for each image)",
    "color_fix": "colour correction against the input",
    "ensemble": "self-ensemble: restore this many flipped copies (1-4) and average them (N times the work)",
}


def build_parser() -> argparse.ArgumentParser:
    from .backends import BACKEND_NAMES, default_backend
    from .color_fix import COLOR_FIXES
    from .models.spire_model import RESTORE_DEFAULT_KEYS
    from .pipeline import DEFAULT_DEVICE, DEFAULT_MODEL, RestoreOptions
    from .sampling import SAMPLERS

    parser = argparse.ArgumentParser(prog="spire-rt", description="SPIRE prompt-driven image restoration runtime")
    parser.add_argument("--version", action="version", version=f"spire-rt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    restore = commands.add_parser("restore", help="restore images",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    restore.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    restore.add_argument("-o", "--output", required=True,
                         help="output image file (one input; .png, .jpg, .webp) or folder (created if missing)")
    choices = {"sampler": list(SAMPLERS), "color_fix": list(COLOR_FIXES)}
    for field in fields(RestoreOptions):
        flag = "--" + field.name.replace("_", "-")
        kind = {"int": int, "float": float, "str": str}.get(str(field.type).split(" ")[0], int)
        if field.name in RESTORE_DEFAULT_KEYS:  # left out, it takes the model's spire.json restore_defaults
            restore.add_argument(flag, type=kind, default=argparse.SUPPRESS, choices=choices.get(field.name),
                                 help=f"{OPTION_HELP[field.name]} (default: the model's own, else {field.default})")
        else:
            restore.add_argument(flag, type=kind, default=field.default, help=OPTION_HELP[field.name])
    restore.add_argument("--model", default=DEFAULT_MODEL, help="preset name or model folder")
    restore.add_argument("--adaptor", default=None, help="SPIRE adaptor folder, when --model is a base SD folder")
    restore.add_argument("--backend", default=default_backend(), choices=BACKEND_NAMES)
    restore.add_argument("--threads", type=int, default=None,
                         help="CPU threads for the networks (onnxruntime, torch; default: the library's own)")
    restore.add_argument("--cache", default=None,
                         help="onnxruntime: ONNX artifact cache root (default: $SPIRE_RT_CACHE or ~/.cache/spire-rt)")
    restore.add_argument("--device", default=DEFAULT_DEVICE, help="cpu, cuda or cuda:N")
    restore.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                         help="network precision (default: fp32 on cpu, fp16 on cuda)")
    restore.add_argument("--overwrite", action="store_true", help="replace existing output files")
    restore.add_argument("--quiet", action="store_true", help="no progress bar")

    degrade = commands.add_parser("degrade", help="degrade an image and print its restoration prompt")
    degrade.add_argument("input", metavar="INPUT")
    degrade.add_argument("-o", "--output", required=True, help="degraded image file")
    degrade.add_argument("--seed", type=int, default=None, help="random two-stage degradation from this seed")
    degrade.add_argument("--blur", type=float, default=None, help="Gaussian blur sigma in pixels")
    degrade.add_argument("--downscale", type=float, default=None, help="downscale factor (>= 1)")
    degrade.add_argument("--noise", type=float, default=None, help="Gaussian noise sigma on the [0, 1] scale")
    degrade.add_argument("--jpeg", type=int, default=None, help="JPEG quality 1..100")
    degrade.add_argument("--grey-noise", action="store_true", help="the same noise on every channel")
    degrade.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    info = commands.add_parser("info", help="versions, devices and usable backends")
    restore.set_defaults(run=run_restore)
    degrade.set_defaults(run=run_degrade)
    info.set_defaults(run=run_info)

    # Commands that live beside their subsystem (export, bench, train, eval) register themselves here.
    for module_name in PLUGGED_COMMANDS:
        importlib.import_module(module_name).register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (SpireError, PromptError) as error:
        print(f"spire-rt: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("spire-rt: interrupted", file=sys.stderr)
        return 130


def collect_inputs(inputs: list[str]) -> list[Path]:
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise ImageError(f"{item}: folder holds no {'/'.join(IMAGE_SUFFIXES)} images")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise ImageError(f"{item}: no such file or folder")
    return paths


def plan_outputs(inputs: list[Path], output: str, overwrite: bool) -> list[Path]:
    """Decide every output path, and refuse, before any work is done."""
    output = Path(output)
    # A path with a suffix names a file (checked for a known format); one without names a folder.
    names_file = bool(output.suffix) and not output.is_dir()
    if names_file and len(inputs) == 1:
        return [check_output_path(output, overwrite)]
    if names_file or (output.exists() and not output.is_dir()):
        raise ImageError(f"{output}: {len(inputs)} inputs need an output folder, not a file")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ImageError(f"{output}: cannot create output folder ({error.strerror})") from None
    targets = [output / path.name for path in inputs]
    clashes = {t for t in targets if targets.count(t) > 1}
    if clashes:
        raise ImageError(f"several inputs would write {min(clashes)}; restore them into separate folders")
    return [check_output_path(target, overwrite) for target in targets]


def restore_backend_options(args) -> dict:
    """--threads and --cache as backend options, checked before anything is read or written."""
    options = {}
    if args.threads is not None:
        if args.threads < 1:
            raise SpireError(f"--threads must be a positive integer, got {args.threads}")
        options["threads"] = args.threads
    if args.cache is not None:
        if args.backend != "onnxruntime":  # the other backends export nothing, so a cache would be silently unused
            raise SpireError(f"--cache needs --backend onnxruntime (the {args.backend} backend exports nothing "
                             "to cache)")
        options["cache"] = args.cache
    return options


def run_restore(args) -> int:
    from tqdm import tqdm

    from .pipeline import RestoreOptions, Restorer

    options = {field.name: getattr(args, field.name) for field in fields(RestoreOptions) if hasattr(args, field.name)}
    RestoreOptions(**options).validated()  # a malformed prompt fails before the model loads
    backend_options = restore_backend_options(args)
    inputs = collect_inputs(args.inputs)
    outputs = plan_outputs(inputs, args.output, args.overwrite)
    restorer = Restorer.from_pretrained(args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                                        adaptor=args.adaptor, **backend_options)
    resolved = restorer.resolve(options)
    steps = resolved.steps * resolved.ensemble  # the sampler's steps, once per ensemble member
    if not restorer.model.trained:
        print(f"spire-rt: warning: model {restorer.model.name!r} has untrained (random) weights; its output is "
              "not a restoration", file=sys.stderr)
    images = tqdm(list(zip(inputs, outputs)), desc="images", unit="img", disable=args.quiet or len(inputs) < 2)
    for source, target in images:
        image = load_image(source)
        with tqdm(total=steps, desc=source.name, unit="step", leave=False, disable=args.quiet) as bar:
            restored = restorer(image, progress=lambda done, total: bar.update(done - bar.n), **options)
        save_image(restored, target, overwrite=args.overwrite)
        run = restorer.last_run
        print(f"{source} -> {target}  {run.output_size[1]}x{run.output_size[0]}  seed {run.options.seed}  "
              f"{run.timings['total']:.2f} s")
    return 0


def run_degrade(args) -> int:
    import numpy as np

    from .degrade import degrade, degrade_explicit

    explicit = [args.blur, args.downscale, args.noise, args.jpeg]
    if args.seed is not None and any(value is not None for value in explicit):
        raise SpireError("give either --seed (random degradation) or explicit --blur/--downscale/--noise/--jpeg")
    target = check_output_path(args.output, args.overwrite)
    source = split_image(load_image(args.input))
    try:
        if any(value is not None for value in explicit):
            degraded, params = degrade_explicit(source.rgb, blur=args.blur, downscale=args.downscale,
                                                noise=args.noise, jpeg=args.jpeg, grey_noise=args.grey_noise)
        else:
            seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**32)
            degraded, params = degrade(source.rgb, seed=seed)
    except ValueError as error:
        raise SpireError(str(error)) from None
    alpha = None
    if source.alpha is not None:
        from PIL import Image

        alpha_image = Image.fromarray(source.alpha).resize(degraded.shape[1::-1], Image.Resampling.BICUBIC)
        alpha = np.clip(np.asarray(alpha_image), 0, 1)
    save_image(merge_image(degraded, alpha, source.kind), target, overwrite=args.overwrite)
    print(params.prompt())
    return 0


def run_info(args) -> int:
    import torch

    from .backends import backend_status
    from .models.presets import PRESETS
    from .models.spire_model import shipped_folder

    print(f"spire-rt {__version__}  python {platform.python_version()}  {platform.platform()}")
    for package in ("torch", "diffusers", "transformers", "onnx", "onnxruntime", "triton", "tensorrt"):
        try:
            print(f"  {package:<13}{importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            print(f"  {package:<13}not installed")
    print(f"devices: cpu ({os.cpu_count()} cores)")
    for index in range(torch.cuda.device_count()):
        print(f"         cuda:{index} {torch.cuda.get_device_name(index)}")
    print("backends:")
    for name, status in backend_status().items():
        print(f"  {name:<13}{status}")
    print("presets:")
    for name in PRESETS:
        shipped = shipped_folder(name) is not None
        print(f"  {name:<13}{'shipped weights' if shipped else 'random weights (architecture only)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
