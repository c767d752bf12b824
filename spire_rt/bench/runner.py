"""The benchmark: every backend on the same inputs, interleaved repeat by repeat, warm-up excluded.

    result = run_benchmark(BenchConfig(model="tiny", size=(256, 256), steps=4, repeats=5))

Stages: text encoding (one prompt), VAE encode, one denoiser step (unguided: batch 1; guided: UNet at batch 2
with the adaptor at batch 1), VAE decode, and end to end (a whole `Restorer` call with both prompts, the prompt
cache cleared so text encoding counts). Per stage and backend: median, quartiles, min/max of the repeats, the
speed-up over PyTorch eager measured in the same run (torch median / backend median; > 1 is faster), the
achieved GFLOP/s from the stage's matmul/conv FLOPs (torch's flop counter), and the accuracy cost: each network's
largest error relative to PyTorch's output, the end-to-end image's PSNR against PyTorch's (same seed). Repeats alternate between backends so
that a change in machine load hits them alike; the machine and the load seen by other processes are recorded.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..errors import OptionError

STAGES = ("text_encoder", "vae_encoder", "denoiser", "denoiser_guided", "vae_decoder", "end_to_end")
PIPELINE_STAGES = ("text_encoder", "vae_encoder", "denoiser_guided", "vae_decoder")  # what end to end runs
RESTORE_PROMPT = "Deblur with sigma 1.5; Denoise with sigma 0.05"
SEMANTIC_PROMPT = "a red fire hydrant on a sidewalk"


@dataclass
class BenchConfig:
    model: str = "tiny"
    backends: tuple[str, ...] = ("torch", "onnxruntime")  # "onnxruntime:quantize=int8:threads=2" adds options
    size: tuple[int, int] = (256, 256)
    steps: int = 4
    repeats: int = 5
    warmup: int = 1
    guidance: float = 4.0
    seed: int = 0
    stages: tuple[str, ...] = STAGES
    cache: str | None = None  # ONNX artifact cache root
    threads: int | None = None  # torch and ONNX Runtime intra-op threads (default: each library's own)
    note: str = ""
    count_flops: bool = True
    model_defaults: bool = False  # end-to-end: the model's own restore_defaults instead of steps and guidance

    def validated(self) -> BenchConfig:
        if self.repeats < 1 or self.warmup < 0 or self.steps < 1:
            raise OptionError("repeats and steps must be >= 1 and warmup >= 0")
        unknown = [stage for stage in self.stages if stage not in STAGES]
        if unknown:
            raise OptionError(f"unknown stage(s) {', '.join(unknown)}; use {', '.join(STAGES)}")
        specs = [parse_backend(spec) for spec in self.backends]
        if not specs or specs[0][0] != "torch" or specs[0][1]:
            raise OptionError("the first backend must be plain 'torch': every ratio is measured against it")
        return self


def sampling_label(config: BenchConfig | dict) -> str:
    """How the end-to-end stage samples, for reports and chart titles (`config` may be the result's dict)."""
    values = config if isinstance(config, dict) else asdict(config)
    if values.get("model_defaults"):
        return "the model's default sampling"
    return f"{values['steps']} guided steps"


def parse_backend(spec: str) -> tuple[str, dict]:
    """`onnxruntime:quantize=int8:opt_level=basic` -> ("onnxruntime", {"quantize": "int8", "opt_level": "basic"})."""
    from ..backends import BACKEND_NAMES

    name, *options = spec.strip().split(":")
    if name not in BACKEND_NAMES:
        raise OptionError(f"unknown backend {name!r} in {spec!r}; use {', '.join(BACKEND_NAMES)}")
    parsed = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise OptionError(f"backend option {option!r} in {spec!r} must look like key=value")
        parsed[key] = int(value) if value.isdigit() else {"true": True, "false": False}.get(value.lower(), value)
    return name, parsed


def summarize(samples: list[float]) -> dict:
    ordered = sorted(samples)
    quartiles = np.percentile(ordered, [25, 75]) if len(ordered) > 1 else (ordered[0], ordered[0])
    return {"median_s": statistics.median(ordered), "p25_s": float(quartiles[0]), "p75_s": float(quartiles[1]),
            "min_s": ordered[0], "max_s": ordered[-1], "mean_s": statistics.fmean(ordered),
            "std_s": statistics.stdev(ordered) if len(ordered) > 1 else 0.0, "samples_s": samples}


def cpu_busy_seconds() -> float | None:
    """Busy CPU time of the whole machine so far (all cores, /proc/stat), to estimate others' load."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LoadMeter:
    """How many cores other processes kept busy while the benchmark ran: (machine busy - our own) / wall time."""

    def __init__(self):
        self.wall, self.busy, self.own = time.perf_counter(), cpu_busy_seconds(), own_cpu_seconds()
        self.load_before = os.getloadavg()

    def result(self) -> dict:
        wall = time.perf_counter() - self.wall
        busy = cpu_busy_seconds()
        own = own_cpu_seconds() - self.own
        result = {"loadavg_before": [round(v, 2) for v in self.load_before],
                  "loadavg_after": [round(v, 2) for v in os.getloadavg()],
                  "own_cpu_cores": round(own / wall, 2), "wall_s": round(wall, 1)}
        if busy is not None and self.busy is not None:
            result["other_processes_cpu_cores"] = round(max(0.0, (busy - self.busy - own) / wall), 2)
        return result


def machine_info(threads: int | None) -> dict:
    from ..backends.onnxruntime_backend import cpu_description, cpu_flags

    versions = {}
    for package in ("torch", "onnxruntime", "onnx", "diffusers", "transformers"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory = None
    vector = [flag for flag in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")
              if flag in cpu_flags().split()]
    return {"cpu": cpu_description(), "cpu_vector_extensions": vector, "logical_cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gib": round(memory, 1) if memory else None, "platform": platform.platform(),
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "requested_threads": threads, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "versions": versions}


def stage_feeds(model, network: str, size: tuple[int, int], seed: int) -> dict[str, torch.Tensor]:
    """The inputs one stage call sees: a real prompt's ids for text, random tensors at the image size otherwise."""
    from ..export.descriptors import ShapeProfile, descriptor

    if network == "text_encoder":
        ids = model.tokenizer([RESTORE_PROMPT], padding="max_length", max_length=model.max_text_length,
                              truncation=True, return_tensors="pt").input_ids
        return {"input_ids": ids}
    desc = descriptor(network, model, ShapeProfile.static(size))
    feeds = desc.sample_inputs("opt", seed=seed)
    if "timestep" in feeds:
        feeds["timestep"] = torch.tensor([int(model.scheduler_config.get("num_train_timesteps", 1000)) // 2])
    return feeds


def count_gflop(model, network: str, feeds: dict[str, torch.Tensor]) -> float:
    """Matmul and convolution GFLOP of one call (torch's flop counter, as SPIRE.md's cost table)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..export.descriptors import ShapeProfile, descriptor

    desc = descriptor(network, model, ShapeProfile.default(model))
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        desc.module()(*[feeds[name] for name in desc.input_names])
    return counter.get_total_flops() / 1e9


@dataclass
class BackendRun:
    label: str
    name: str
    options: dict
    backend: object = None
    restorer: object = None
    prepare_s: dict = field(default_factory=dict)


def relative_error(outputs: dict, reference: dict) -> float:
    """max |out - ref| / max |ref| over a network's outputs: what each backend costs in accuracy (int8: most)."""
    worst = 0.0
    for name, ref in reference.items():
        scale = max(float(ref.abs().max()), 1e-12)
        worst = max(worst, float((outputs[name].float() - ref.float()).abs().max()) / scale)
    return worst


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run_benchmark(config: BenchConfig, report=print) -> dict:
    config.validated()
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return benchmark(config, report)
    finally:
        torch.set_num_threads(threads)


def benchmark(config: BenchConfig, report) -> dict:
    from ..backends import create_backend
    from ..models.spire_model import load_model
    from ..pipeline import Restorer

    meter = LoadMeter()
    started = time.time()
    model = load_model(config.model)
    multiple = model.pixel_multiple
    if config.size[0] % multiple or config.size[1] % multiple:
        raise OptionError(f"--size must be a multiple of {multiple} for {config.model}")
    report(f"model {model.name} ({'trained' if model.trained else 'random weights'}), {config.size[0]}x"
           f"{config.size[1]}, {sampling_label(config)}, {config.repeats} repeats, backends {', '.join(config.backends)}")

    runs = []
    for spec in config.backends:
        name, options = parse_backend(spec)
        if name == "onnxruntime":
            from ..export.descriptors import ShapeProfile

            # Static shapes by default (what a fixed-size deployment exports); shapes=dynamic: the default range.
            dynamic = options.pop("shapes", "static") == "dynamic"
            profile = ShapeProfile.default(model) if dynamic else ShapeProfile.static(config.size)
            options = {"cache": config.cache, "profile": profile,
                       **({"threads": config.threads} if config.threads else {}), **options}
        run = BackendRun(spec, name, options)
        begun = time.perf_counter()
        run.backend = create_backend(name, model, **options)
        run.prepare_s["create"] = time.perf_counter() - begun
        run.restorer = Restorer(model, run.backend)
        runs.append(run)

    result = {"benchmark": "spire-rt bench", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
              "command": sys.argv, "config": {**asdict(config), "size": list(config.size)},
              "machine": machine_info(config.threads),
              "model": {"name": model.name, "trained": model.trained,
                        "parameters_millions": {name: round(sum(p.numel() for p in module.parameters()) / 1e6, 1)
                                                for name, module in model.modules().items()}},
              "stages": {}}

    rng = np.random.default_rng(config.seed)
    image = rng.random((*config.size, 3), dtype=np.float32)
    images = {}

    for stage in config.stages:
        entry = {"backends": {}}
        if stage == "end_to_end":
            # What `spire-rt restore IMAGE --restore ...` runs (no semantic prompt, the model's own sampling), or
            # a fixed number of guided steps in one pass (no self-ensemble), comparable across models.
            sampling = ({} if config.model_defaults else
                        {"prompt": SEMANTIC_PROMPT, "guidance": config.guidance, "steps": config.steps,
                         "ensemble": 1})

            def call(run, sampling=sampling):
                run.restorer.prompts.cache.clear()
                return run.restorer(image, restore=RESTORE_PROMPT, seed=config.seed, **sampling)
            entry["what"] = f"Restorer call: {sampling_label(config)}, text encoding, VAE encode and decode"
        else:
            feeds = stage_feeds(model, stage, config.size, config.seed)
            entry["what"] = {"text_encoder": "one prompt", "vae_encoder": "one image",
                             "denoiser": "one unguided step (adaptor + UNet at batch 1)",
                             "denoiser_guided": "one guided step (adaptor at batch 1, UNet at batch 2)",
                             "vae_decoder": "one latent"}[stage]
            entry["input_shapes"] = {name: list(value.shape) for name, value in feeds.items()}
            if config.count_flops:
                entry["gflop"] = round(count_gflop(model, stage, feeds), 2)

            def call(run, stage=stage, feeds=feeds):
                return run.backend.run(stage, feeds)
        samples = {run.label: [] for run in runs}
        # Warm-up: session creation (and export, if the cache is cold) happens here. The end-to-end stage needs
        # none of its own when the stages before it already ran every network it uses (at its shapes).
        # (With the model's defaults, which networks it runs depends on the model: always warm up.)
        warmed = stage == "end_to_end" and not config.model_defaults and set(PIPELINE_STAGES) <= set(result["stages"])
        warmups = config.warmup if warmed else max(1, config.warmup)
        outputs = {}
        for run in runs:
            begun = time.perf_counter()
            for _ in range(warmups):
                outputs[run.label] = call(run)
            if warmups:
                run.prepare_s[stage] = time.perf_counter() - begun
        for repeat in range(config.repeats):
            for run in runs:
                begun = time.perf_counter()
                output = call(run)
                samples[run.label].append(time.perf_counter() - begun)
                if stage == "end_to_end" and repeat == 0:
                    images[run.label] = np.asarray(output)
        reference = statistics.median(samples[runs[0].label])
        for run in runs:
            stats = summarize(samples[run.label])
            stats["speedup_vs_torch"] = reference / stats["median_s"]
            if entry.get("gflop"):
                stats["gflop_per_s"] = entry["gflop"] / stats["median_s"]
            if stage != "end_to_end" and run.label in outputs:
                stats["rel_err_vs_torch"] = relative_error(outputs[run.label], outputs[runs[0].label])
            if stage == "end_to_end":
                # What ran, the model's restore_defaults included (a one-step model's strength, say).
                entry.setdefault("options", asdict(run.restorer.last_run.options))
                stats["images_per_s"] = 1.0 / stats["median_s"]
                value = psnr(images[run.label], images[runs[0].label])
                stats["psnr_vs_torch_db"] = None if value == float("inf") else round(value, 2)  # None: identical
            entry["backends"][run.label] = stats
        result["stages"][stage] = entry
        report(stage_line(stage, entry))
        for run in runs:  # a large model's other sessions need the memory more than this one
            release = getattr(run.backend, "release", None)
            if release and stage in ("denoiser",):
                release(stage)
        gc.collect()

    result["backends"] = {run.label: {"name": run.name, "options": {k: str(v) for k, v in run.options.items()},
                                      "providers": getattr(run.backend, "providers", None),
                                      "prepare_s": {k: round(v, 2) for k, v in run.prepare_s.items()}}
                          for run in runs}
    result["load"] = meter.result()
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    result["note"] = config.note
    for run in runs:
        run.backend.close()
    return result


def stage_line(stage: str, entry: dict) -> str:
    parts = []
    for label, stats in entry["backends"].items():
        extra = f" {stats['images_per_s']:.3f} img/s" if "images_per_s" in stats else ""
        parts.append(f"{label} {stats['median_s'] * 1e3:.1f} ms (x{stats['speedup_vs_torch']:.2f}{extra})")
    return f"{stage:<16}" + "  |  ".join(parts)
