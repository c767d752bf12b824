"""`spire-rt bench`: PyTorch eager against ONNX Runtime (and later TensorRT), per network and end to end.

    spire-rt bench --model tiny --size 256x256 --steps 4 --repeats 10 \\
        --json bench/results/tiny_256.json --plot bench/results/tiny_256.png
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from .runner import STAGES, BenchConfig

HELP = {
    "model": "preset name or model folder",
    "backends": "comma list; the first must be torch; options as onnxruntime:quantize=int8:threads=2",
    "size": "image size HxW in pixels",
    "steps": "sampler steps of the end-to-end stage",
    "repeats": "timed repeats per stage and backend",
    "warmup": "untimed calls per stage and backend first",
    "guidance": "guidance scale of the end-to-end stage",
    "seed": "seed of the inputs and of the end-to-end sampling",
    "stages": f"comma list of {', '.join(STAGES)}",
    "cache": "ONNX artifact cache root; if not given, $SPIRE_RT_CACHE or ~/.cache/spire-rt",
    "threads": "intra-op threads for torch and ONNX Runtime; if not given, each library's own",
    "note": "free text recorded in the JSON (e.g. what else ran on the machine)",
    "count_flops": "count each stage's FLOPs (one extra PyTorch call per stage)",
    "model_defaults": "end-to-end stage: sample with the model's own restore_defaults (a one-step model's steps "
                      "and strength) instead of --steps and --guidance",
}


def register(commands) -> None:
    parser = commands.add_parser("bench", help="benchmark backends per network and end to end",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = BenchConfig()
    for item in fields(BenchConfig):
        flag = "--" + item.name.replace("_", "-")
        default = getattr(defaults, item.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=HELP[item.name])
        elif isinstance(default, tuple):
            shown = "x".join(map(str, default)) if item.name == "size" else ",".join(default)
            parser.add_argument(flag, default=shown, help=HELP[item.name])
        else:
            kind = int if isinstance(default, int) else float if isinstance(default, float) else str
            parser.add_argument(flag, type=kind if default is not None else (int if item.name == "threads" else str),
                                default=default, help=HELP[item.name])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--plot", default=None, help="write a PNG bar chart here")
    parser.set_defaults(run=run_bench)


def run_bench(args) -> int:
    from ..export.descriptors import parse_size
    from .plot import draw_chart
    from .runner import run_benchmark

    values = {item.name: getattr(args, item.name) for item in fields(BenchConfig)}
    values["size"] = parse_size(values["size"])
    values["backends"] = tuple(part.strip() for part in values["backends"].split(",") if part.strip())
    values["stages"] = tuple(part.strip() for part in values["stages"].split(",") if part.strip())
    result = run_benchmark(BenchConfig(**values), report=lambda line: print(line, flush=True))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    if args.plot:
        print(f"wrote {draw_chart(result, args.plot)}")
    load = result["load"]
    print(f"other processes kept {load.get('other_processes_cpu_cores', '?')} cores busy; "
          f"peak memory {result['peak_rss_gib']} GiB")
    return 0
