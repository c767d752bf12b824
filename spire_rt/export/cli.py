"""`spire-rt export`: the model's networks to ONNX, reused when nothing they depend on changed, checked on demand.

    spire-rt export --model tiny --out onnx/tiny --dynamic 64:512 --check
    spire-rt export --model sd21-base --size 512x512 --precision fp16 --check
"""

from __future__ import annotations

import argparse
import resource
import time


def register(commands) -> None:
    parser = commands.add_parser(
        "export", help="export the networks to ONNX (reused when unchanged) and check them against PyTorch",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="tiny", help="preset name or model folder")
    parser.add_argument("--adaptor", default=None, help="SPIRE adaptor folder, when --model is a base SD folder")
    parser.add_argument("--out", default=None,
                        help="artifact folder; if not given, a folder per key under the cache (see --cache)")
    parser.add_argument("--cache", default=None, help="cache root; if not given, $SPIRE_RT_CACHE or ~/.cache/spire-rt")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    shapes = parser.add_mutually_exclusive_group()
    shapes.add_argument("--size", default=None, help="static image size HxW in pixels")
    shapes.add_argument("--dynamic", default=None,
                        help="dynamic image sides MIN:MAX[:OPT] in pixels; with neither option, the model's whole range")
    parser.add_argument("--batch", type=int, default=1, help="largest image batch the graphs accept")
    parser.add_argument("--networks", default="all",
                        help="'all', 'pipeline' (what restore runs) or a comma list of network names")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or newer)")
    parser.add_argument("--fused-attention", action="store_true",
                        help="also export the ONNX Runtime flavour with fused attention (what its backend runs)")
    parser.add_argument("--force", action="store_true", help="export again even when valid artifacts exist")
    parser.add_argument("--check", action="store_true", help="compare ONNX Runtime with PyTorch per network")
    parser.add_argument("--seed", type=int, default=None, help="seed of the --check inputs; if not given, a fresh one")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for --check; if not given, its own choice")
    parser.set_defaults(run=run_export)


def run_export(args) -> int:
    from ..models.spire_model import load_model
    from .artifacts import ArtifactKey, Artifacts
    from .check import check_artifacts, require_passed
    from .descriptors import ShapeProfile, parse_networks
    from .exporter import ensure_exported

    started = time.perf_counter()
    networks = parse_networks(args.networks)
    model = load_model(args.model, adaptor=args.adaptor)
    profile = ShapeProfile.parse(args.size, args.dynamic, model, batch=args.batch)
    key = ArtifactKey.for_model(model, args.precision, profile, args.opset)
    artifacts = Artifacts(args.out, key) if args.out else Artifacts.in_cache(key, args.cache)
    print(f"model {model.name}  hash {key.model_hash[:16]}  {args.precision}  {profile.describe()}  "
          f"opset {args.opset}")
    if not model.trained:
        print(f"note: model {model.name!r} has random weights (architecture only)")
    stale = artifacts.stale_reason()
    if stale:
        print(f"{artifacts.root}: existing artifacts are stale ({stale}); rebuilding")
    flavours = (False, True) if args.fused_attention else (False,)
    paths = {}
    for fused in flavours:
        exported = ensure_exported(model, artifacts, networks, force=args.force, fused=fused,
                                   report=lambda line: print(line, flush=True))
        paths.update({path.name.removesuffix(".onnx"): path for path in exported.values()})
    manifest = artifacts.read_manifest()["artifacts"]
    for artifact, path in paths.items():
        size = sum(item["bytes"] for item in manifest[artifact]["files"].values())
        print(f"  {artifact:<20}{path}  {size / 2**20:,.1f} MiB  (exported in {manifest[artifact]['export_seconds']} s)")
    print(f"manifest: {artifacts.manifest_path}")
    if args.check:
        results = []
        for fused in flavours:
            results += check_artifacts(model, artifacts, networks, seed=args.seed, fused=fused,
                                       release_model=fused == flavours[-1],
                                       report=lambda line: print(line, flush=True), threads=args.threads)
        require_passed(results)
        print(f"check passed: {len(results)} outputs within {results[0].tolerance:g} relative")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"done in {time.perf_counter() - started:.1f} s, peak memory {peak:.2f} GiB")
    return 0

