#!/usr/bin/env python3
"""Issue 4's GPU check, one command: kernel tests, kernel and guided-step timings, end-to-end time, PSNR.

    python bench/gpu_check.py --out DIR          # on the GPU machine (bench/gpu_check.sh wraps it); installs nothing
    python bench/gpu_check.py --smoke --out DIR  # the same logic on the CPU: tiny preset, tiny shapes, interpreter

What it measures, in this order (each section is timed, and a failing one is recorded and skipped past):
1. env          GPU, driver-visible versions
2. roofline     device copy bandwidth (a 1 GiB copy, bytes read + written) and a bf16 8192^3 matmul rate
3. kernels      each Triton kernel against the PyTorch eager sequence it replaces, at the SD 2.1 512x512 guided
                shapes (batch 2, channels-last): median time, the fewest bytes it must move, GB/s beside the copy
                bandwidth; the decoder entry also over a few tile sizes. Each is timed twice: called directly (with
                Python and launch overhead) and as CUDA-graph replays (GPU time, as inside the fast path)
4. tests        pytest tests/kernels tests/fast on the GPU (a subprocess, run while the model is built on the CPU)
5. step         one guided denoiser step (UNet batch 2 + adaptor batch 1, sd21-base random weights, 64x64
                latent) through the backends: eager fp16 (TorchBackend), torch.compile default mode (fp16,
                channels-last), and the fast path (FastTorchBackend: kernels + CUDA graph + the adaptor on a
                second stream; bf16 for SD 2.x; also on one stream, in fp16, and without the graph); ratio to the
                FLOP floor (1.59 TFLOP per step, SPIRE.md)
6. e2e          512x512 restoration, 20 steps, guided, through Restorer: fast path (also one stream), eager fp16
7. psnr         the fast path's (and eager fp16's) restored image against the fp32 path's (TF32 off), same seed
   variants     the fast step with fewer of its parts (graph only; reference ops; no fused QKV), and variants
                before they become options (SDPA preferring cuDNN attention)
8. profile      the fast step's GPU kernel time by kind (convolution, gemm, attention, our Triton kernels, ...)
JSON (written after every section) and the log go to --out; a short table is printed last.

Targets (issue 4): step >= 2.5x eager fp16 and >= 1.2x compile; step <= 4x the FLOP floor; e2e < 250 ms; the
64x64 decoder entry >= 80% of copy bandwidth and >= 2x eager; PSNR >= 35 dB.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDED_STEP_FLOP = 1.59e12  # SPIRE.md: UNet at batch 2 + adaptor at batch 1, 512x512, SD 2.1 base layout
H100_BF16_FLOPS = 790e12  # SPIRE.md: the dense bf16 rate measured on an H100
RESTORE = "Deblur with sigma 1.5; Denoise with sigma 0.06"
SHORT_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
PROMPT = "a red fire hydrant on a sidewalk"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results" / "latest"),
                        help="folder for gpu_check.json and gpu_check.log, not holding them yet (default: $OUT)")
    parser.add_argument("--smoke", action="store_true", help="tiny preset and shapes, runs on the CPU")
    parser.add_argument("--preset", default=None, help="default: sd21-base (tiny with --smoke)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 512; 32 smoke)")
    parser.add_argument("--steps", type=int, default=None, help="restoration steps (default 20; 2 smoke)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting sections after this")
    parser.add_argument("--tests", default=None,
                        help="pytest targets, comma-separated; 'none' skips (default: tests/kernels,tests/fast)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--quick", action="store_true",
                        help="only the rows the targets need (no fp16 / no-graph rows, variants or profile)")
    parser.add_argument("--compile", action="store_true", help="run the torch.compile row in --smoke too")
    parser.add_argument("--iters", type=int, default=None, help="timed guided steps per backend (default 20)")
    parser.add_argument("--kernels", default="", help="time only the kernel cases whose names contain one of these "
                        "comma-separated words (default: all)")
    args = parser.parse_args(argv)
    args.preset = args.preset or ("tiny" if args.smoke else "sd21-base")
    args.size = args.size or (32 if args.smoke else 512)
    args.steps = args.steps or (2 if args.smoke else 20)
    args.iters = args.iters or (3 if args.smoke else 20)
    default_tests = "tests/kernels/test_modulate.py" if args.smoke else "tests/kernels,tests/fast"
    args.tests = [] if args.tests == "none" else (args.tests or default_tests).split(",")
    args.run_compile = not args.no_compile and (args.compile or not args.smoke)
    args.kernels = [word for word in args.kernels.split(",") if word]
    args.e2e_runs = 1 if args.smoke else 3
    return args


class Tee:
    """Everything printed also goes to the log file."""

    def __init__(self, stream, path: Path):
        self.stream, self.file = stream, open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the run)

    def write(self, text):
        self.stream.write(text)
        self.file.write(text)
        self.stream.flush()
        self.file.flush()
        return len(text)

    def flush(self):
        self.stream.flush()
        self.file.flush()


class Check:
    """The results, the time budget, and the running of each section."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.results = {"args": {k: v for k, v in vars(args).items()}, "sections_s": {}, "errors": {},
                        "skipped": []}

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.started)

    def section(self, name, function, needs_s: float = 0.0):
        if self.left() < needs_s:
            print(f"\n== {name}: skipped, {self.left():.0f} s left of the budget (needs about {needs_s:.0f})")
            self.results["skipped"].append(name)
            self.save()
            return None
        print(f"\n== {name} ({self.left():.0f} s left)")
        started = time.perf_counter()
        try:
            value = function()
        except Exception as error:  # noqa: BLE001 (one broken section must not cost the others' numbers)
            traceback.print_exc()
            self.results["errors"][name] = f"{type(error).__name__}: {error}"[:2000]
            value = None
        self.results["sections_s"][name] = round(time.perf_counter() - started, 2)
        self.save()
        return value

    def save(self):
        path = self.out / "gpu_check.json"
        path.write_text(json.dumps(self.results, indent=2, default=str) + "\n", encoding="utf-8")


# --- timing ---------------------------------------------------------------------------------------------------

def timer_ms(function, cuda: bool, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median milliseconds per call: triton's do_bench (CUDA events, L2 flushed between calls) or a host clock."""
    if cuda:
        from triton.testing import do_bench

        return float(do_bench(function, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    function()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def time_calls_ms(function, cuda: bool, iters: int, repeats: int = 3) -> float:
    """Median over `repeats` of the mean time of `iters` back-to-back calls (a step as the sampler sees it)."""
    import torch

    results = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                function()
            end.record()
            torch.cuda.synchronize()
            results.append(start.elapsed_time(end) / iters)
        else:
            started = time.perf_counter()
            for _ in range(iters):
                function()
            results.append((time.perf_counter() - started) * 1e3 / iters)
    return statistics.median(results)


def free_memory():
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# --- sections -------------------------------------------------------------------------------------------------

def section_env(check):
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "host": platform.node(), "smoke": check.args.smoke}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        env["diffusers"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1))
    else:
        env["gpu"] = None
    from spire_rt.kernels import INTERPRET, triton_available

    env.update(triton_interpret=INTERPRET, triton_kernels=triton_available())
    check.results["env"] = env
    print(json.dumps(env))


def section_roofline(check, cuda):
    import torch

    device = "cuda" if cuda else "cpu"
    numel = 2**28 if cuda else 2**22  # 1 GiB (16 MiB smoke) of fp32
    x = torch.randn(numel, device=device)
    y = torch.empty_like(x)
    copy_ms = timer_ms(lambda: y.copy_(x), cuda)
    copy_gbps = 2 * x.numel() * 4 / copy_ms / 1e6
    n = 8192 if cuda else 256
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm_ms = timer_ms(lambda: a @ b, cuda)
    roof = {"copy_gbps": round(copy_gbps, 1), "copy_bytes": 2 * x.numel() * 4,
            "matmul_bf16_tflops": round(2 * n**3 / mm_ms / 1e9, 1), "matmul_n": n}
    check.results["roofline"] = roof
    print(json.dumps(roof))
    return roof


def kernel_cases(smoke: bool):
    """(name, builder) pairs; a builder makes its inputs and returns (kernel call, eager call in the same layout,
    fewest bytes moved, eager call on NCHW copies or None)."""
    import torch

    from spire_rt.kernels import (
        decoder_entry,
        decoder_entry_ref,
        geglu,
        geglu_ref,
        groupnorm_silu,
        groupnorm_silu_ref,
        modulate,
        modulate_ref,
    )

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16
    scale = 8 if smoke else 1  # smoke: channels / 8 ... keeps every code path, at toy size

    def t(*shape, cl=True):
        tensor = torch.randn(*shape, device=device, dtype=dtype)
        return tensor.contiguous(memory_format=torch.channels_last) if cl and tensor.dim() == 4 else tensor

    def nbytes(*tensors):
        return sum(x.numel() * x.element_size() for x in tensors)

    def entry(hc, sc, side, block_elements=4096):
        def build():
            hc_, sc_, side_ = hc // scale, sc // scale, max(2, side // scale)
            h, skip = t(2, hc_, side_, side_), t(2, sc_, side_, side_)
            mod, strength = t(2, 2 * sc_, side_, side_), torch.ones(1, 1, 1, 1, device=device, dtype=dtype)
            w, b = t(hc_ + sc_, cl=False), t(hc_ + sc_, cl=False)
            groups = 8 if smoke else 32
            outputs = 2 * h.numel() * h.element_size() * (hc_ + sc_) // hc_
            h2, skip2, mod2 = h.contiguous(), skip.contiguous(), mod.contiguous()  # NCHW copies for eager
            return (lambda: decoder_entry(h, skip, mod, strength, w, b, groups, block_elements=block_elements),
                    lambda: decoder_entry_ref(h, skip, mod, strength, w, b, groups),
                    nbytes(h, skip, mod) + outputs,
                    lambda: decoder_entry_ref(h2, skip2, mod2, strength, w, b, groups))
        return build

    def entry_apply(hc, sc, side):
        """The split strategy's last launch alone (normalise, scale, shift, SiLU), given x and the statistics."""
        def build():
            from spire_rt.kernels.groupnorm_silu import apply_groupnorm

            c_, side_ = (hc + sc) // scale, max(2, side // scale)
            groups = 8 if smoke else 32
            x, y = t(2, c_, side_, side_), t(2, c_, side_, side_)
            w, b = t(c_, cl=False), t(c_, cl=False)
            grouped = x.float().reshape(2, groups, -1)  # NCHW order: a group's channels are adjacent
            mean, rstd = grouped.mean(-1), (grouped.var(-1, unbiased=False) + 1e-5).rsqrt()
            x2 = x.contiguous()
            return (lambda: (apply_groupnorm(x, mean, rstd, w, b, y, None, True, True), y)[1],
                    lambda: groupnorm_silu_ref(x, w, b, groups), 2 * nbytes(x),
                    lambda: groupnorm_silu_ref(x2, w, b, groups))
        return build

    def entry_finalize(hc, sc, side):
        """The split strategy's middle launch alone: per-channel partial statistics merged into each group's."""
        def build():
            from spire_rt.kernels.groupnorm_silu import finalize_statistics, partial_tiling

            c_, spatial = (hc + sc) // scale, max(2, side // scale) ** 2
            groups = 8 if smoke else 32
            rows = partial_tiling(c_, spatial, True, 4096)[3]
            tiles = -(-spatial // rows)
            mean_p = torch.randn(2, tiles, c_, device=device)
            m2_p = torch.rand(2, tiles, c_, device=device) * rows
            merged = mean_p.reshape(2, tiles, groups, -1)  # the same merge in PyTorch (Chan et al.), as reference
            n = torch.tensor([min(rows, spatial - i * rows) for i in range(tiles)], device=device, dtype=torch.float32)
            n = n.reshape(1, tiles, 1, 1).expand_as(merged)

            def reference():
                mean = (merged * n).sum((1, 3)) / (spatial * c_ // groups)
                m2 = (m2_p.reshape(merged.shape) + n * (merged - mean[:, None, :, None]) ** 2).sum((1, 3))
                return mean, (m2 / (spatial * c_ // groups) + 1e-5).rsqrt()
            return (lambda: finalize_statistics(mean_p, m2_p, spatial, rows, groups, 1e-5)[1],
                    lambda: reference()[1], nbytes(mean_p, m2_p), None)
        return build

    def same_bytes_copy(hc, sc, side):
        """A plain copy moving the 64x64 entry's bytes: what memory allows at this size, beside the 1 GiB copy."""
        def build():
            side_ = max(2, side // scale)
            read, written = (hc + 3 * sc) // scale, 2 * (hc + sc) // scale  # channels: h, skip, gamma/beta; x, y
            x = t(2 * side_ * side_ * (read + written) // 2, cl=False)  # read once and written once: the same bytes
            y = torch.empty_like(x)
            return lambda: y.copy_(x), lambda: y.copy_(x), 2 * nbytes(x), None
        return build

    def gn(c, side, shift, silu=True):
        def build():
            c_, side_ = c // scale, max(2, side // scale)
            x, w, b = t(2, c_, side_, side_), t(c_, cl=False), t(c_, cl=False)
            s = t(2, c_, cl=False) if shift else None
            groups = 8 if smoke else 32
            x2 = x.contiguous()
            return (lambda: groupnorm_silu(x, w, b, groups, shift=s, silu=silu),
                    lambda: groupnorm_silu_ref(x, w, b, groups, shift=s, silu=silu),
                    2 * nbytes(x),
                    lambda: groupnorm_silu_ref(x2, w, b, groups, shift=s, silu=silu))
        return build

    def mod(c, side):
        def build():
            c_, side_ = c // scale, max(2, side // scale)
            f, m = t(2, c_, side_, side_), t(2, 2 * c_, side_, side_)
            s = torch.ones(1, 1, 1, 1, device=device, dtype=dtype)
            f2, m2 = f.contiguous(), m.contiguous()
            return (lambda: modulate(f, m, s), lambda: modulate_ref(f, m, s), 2 * nbytes(f) + nbytes(m),
                    lambda: modulate_ref(f2, m2, s))
        return build

    def gg(tokens, dim):
        def build():
            u = t(2, tokens // scale, 2 * dim // scale)
            return lambda: geglu(u), lambda: geglu_ref(u), nbytes(u) * 3 // 2, None
        return build

    return [
        ("decoder_entry 64x64 640+320", entry(640, 320, 64)),
        ("decoder_entry 64x64 320+320", entry(320, 320, 64)),
        ("decoder_entry 32x32 1280+640", entry(1280, 640, 32)),
        ("decoder_entry 16x16 1280+640", entry(1280, 640, 16)),
        ("decoder_entry 8x8 1280+1280", entry(1280, 1280, 8)),
        *[(f"decoder_entry 64x64 640+320 tile{e}", entry(640, 320, 64, e)) for e in (1024, 2048, 8192, 16384)],
        ("decoder_entry 64x64 640+320 apply launch", entry_apply(640, 320, 64)),
        ("decoder_entry 64x64 640+320 finalize launch", entry_finalize(640, 320, 64)),
        ("copy, 64x64 entry bytes", same_bytes_copy(640, 320, 64)),
        ("groupnorm_silu+temb 64x64 320", gn(320, 64, True)),
        ("groupnorm_silu+temb 16x16 1280", gn(1280, 16, True)),
        ("groupnorm 32x32 640 (transformer)", gn(640, 32, False, silu=False)),
        ("modulate 64x64 320", mod(320, 64)),
        ("geglu 4096x1280", gg(4096, 1280)),
    ]


def section_kernels(check, cuda, copy_gbps):
    import torch

    rows = []
    for name, build in kernel_cases(check.args.smoke):
        if check.args.kernels and not any(word in name for word in check.args.kernels):
            continue
        row = {"name": name}
        try:
            kernel, eager, nbytes, eager_nchw = build()
            out, ref = kernel(), eager()
            out, ref = (out[1], ref[1]) if isinstance(out, tuple) else (out, ref)
            row["rel_err_vs_eager"] = float((out.float() - ref.float()).norm() / ref.float().norm())
            row["kernel_ms"] = timer_ms(kernel, cuda)
            row["eager_ms"] = timer_ms(eager, cuda)
            if eager_nchw is not None:
                row["eager_nchw_ms"] = timer_ms(eager_nchw, cuda)
            row["bytes"] = nbytes
            add_rates(row, "", "", nbytes, copy_gbps)
            if cuda:
                time_in_graphs(row, kernel, eager, eager_nchw, nbytes, copy_gbps)
        except Exception as error:  # noqa: BLE001 (recorded; the other kernels still get timed)
            traceback.print_exc()
            row["error"] = f"{type(error).__name__}: {error}"[:500]
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
        del row
        free_memory()
    check.results["kernels"] = rows
    torch.cuda.empty_cache() if cuda else None


def time_in_graphs(row, kernel, eager, eager_nchw, nbytes, copy_gbps):
    """The same calls captured in CUDA graphs and replayed: GPU time alone, as the fast path runs them.

    A direct call also pays Python and launch overhead (tens of microseconds for a three-launch split kernel),
    which can exceed the GPU work at small shapes; inside the fast path's graph that overhead is gone.
    """
    from spire_rt.fast.graph import GraphedCall

    for key, function in (("kernel", kernel), ("eager", eager), ("eager_nchw", eager_nchw)):
        if function is not None:
            replay = GraphedCall(function)
            replay()  # warm-up and capture
            row[f"{key}_graph_ms"] = timer_ms(replay, True)
    add_rates(row, "_graph", "graph_", nbytes, copy_gbps)


def add_rates(row, timing: str, prefix: str, nbytes, copy_gbps):
    """From row's kernel{timing}_ms and its eager twins (the faster layout counts): {prefix}gbps, {prefix}speedup
    and {prefix}pct_copy (of the measured copy bandwidth)."""
    kernel_ms = row[f"kernel{timing}_ms"]
    best_eager = min(row[f"eager{timing}_ms"], row.get(f"eager_nchw{timing}_ms", float("inf")))
    row[f"{prefix}gbps"] = nbytes / kernel_ms / 1e6
    row[f"{prefix}speedup"] = best_eager / kernel_ms
    if copy_gbps:
        row[f"{prefix}pct_copy"] = 100 * row[f"{prefix}gbps"] / copy_gbps


def start_tests(check, cuda):
    """pytest in a subprocess (no shell), left running while the model is built on the CPU."""
    if not check.args.tests:
        return None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", *check.args.tests]
    try:
        import xdist  # noqa: F401  (pytest-xdist: compile the kernels' variants in parallel)

        command[3:3] = ["-n", "8" if cuda else "2"]
    except ImportError:
        pass
    log = open(check.out / "tests.log", "w", encoding="utf-8")  # noqa: SIM115 (closed by finish_tests)
    print("running:", " ".join(command))
    # its own process group, so a cut-off run takes its xdist workers with it (they would skew the timings)
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    return {"process": process, "log": log, "command": command, "started": time.monotonic()}


def finish_tests(check, handle, timeout_s):
    if handle is None:
        check.results["tests"] = {"skipped": True}
        return
    process = handle["process"]
    try:
        rc = process.wait(timeout=max(1.0, timeout_s))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        rc = "timeout"
    handle["log"].close()
    text = (check.out / "tests.log").read_text(encoding="utf-8", errors="replace")
    summary = [line for line in text.splitlines() if " passed" in line or " failed" in line or "error" in line]
    check.results["tests"] = {"returncode": rc, "command": " ".join(handle["command"]),
                              "summary": summary[-1] if summary else None,
                              "seconds": round(time.monotonic() - handle["started"], 1),
                              "tail": text.splitlines()[-30:]}
    print("\n".join(text.splitlines()[-15:]))


def build_model(check):
    import torch

    from spire_rt.models import build_preset

    started = time.perf_counter()
    model = build_preset(check.args.preset)
    # Small random fusion heads: a zero-initialised adaptor would make the modulation an exact identity.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for head in [*model.controlnet.skip_heads, model.controlnet.mid_head]:
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.02)
            head.bias.copy_(torch.randn(head.bias.shape, generator=generator) * 0.02)
    check.results["model"] = {"preset": check.args.preset, "build_s": round(time.perf_counter() - started, 1),
                              "unet_params_m": round(sum(p.numel() for p in model.unet.parameters()) / 1e6, 1),
                              "adaptor_params_m": round(sum(p.numel() for p in model.controlnet.parameters()) / 1e6,
                                                        1)}
    print(json.dumps(check.results["model"]))
    return model


def step_feeds(model, size, device):
    import torch

    generator = torch.Generator().manual_seed(0)
    latent = size // model.vae_scale_factor
    channels = model.unet.config.in_channels
    width = model.text_encoder.config.hidden_size
    length = model.max_text_length
    feeds = {
        "sample": torch.randn(1, channels, latent, latent, generator=generator),
        "timestep": torch.tensor([500]),
        "y_latent": torch.randn(1, channels, latent, latent, generator=generator),
        "restore_embeddings": torch.randn(1, length, width, generator=generator),
        "semantic_embeddings": torch.randn(2, length, width, generator=generator),
        "adaptor_strength": torch.tensor([1.0]),
        "guidance_scale": torch.tensor([4.0]),
    }
    return {name: tensor.to(device) for name, tensor in feeds.items()}


def time_step(check, backend, feeds, label, cuda):
    import torch

    started = time.perf_counter()
    first = backend.run("denoiser_guided", feeds)["model_output"]  # probe, compile or capture happen here
    if cuda:
        torch.cuda.synchronize()
    first_s = time.perf_counter() - started
    for _ in range(2):
        backend.run("denoiser_guided", feeds)
    ms = time_calls_ms(lambda: backend.run("denoiser_guided", feeds), cuda, check.args.iters)
    floor_ms = GUIDED_STEP_FLOP / H100_BF16_FLOPS * 1e3
    row = {"ms": ms, "first_call_s": round(first_s, 2), "finite": bool(torch.isfinite(first).all()),
           "x_floor_790": ms / floor_ms}
    measured = check.results.get("roofline", {}).get("matmul_bf16_tflops")
    if measured:
        row["x_floor_measured"] = ms / (GUIDED_STEP_FLOP / (measured * 1e12) * 1e3)
    if hasattr(backend, "describe"):
        row["backend"] = backend.describe()
    check.results.setdefault("step", {})[label] = row
    print(label, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    return row


def test_image(size):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.stack([0.5 + 0.35 * np.sin(7 * x + 3 * c) * np.cos(5 * y - c) for c in range(3)], axis=2)
    image[size // 4: size // 2, size // 3: 2 * size // 3] = [0.85, 0.15, 0.1]
    image = np.clip(image + rng.normal(0, 0.03, image.shape), 0, 1)
    return Image.fromarray((image * 255).round().astype(np.uint8))


def time_e2e(check, model, backend, label, cuda, runs=None):
    """Warm-up once (captures, compiles), then the median of `runs` whole restorations; returns the image."""
    import numpy as np

    from spire_rt.pipeline import Restorer

    restorer = Restorer(model, backend)
    image = test_image(check.args.size)
    options = {"restore": RESTORE, "prompt": PROMPT, "steps": check.args.steps, "seed": 0}
    restorer(image, **options)
    totals, phases, result = [], [], None
    for _ in range(runs or check.args.e2e_runs):
        result = restorer(image, **options)
        totals.append(restorer.last_run.timings["total"] * 1e3)
        phases.append({k: round(v * 1e3, 2) for k, v in restorer.last_run.timings.items()})
    row = {"ms": statistics.median(totals), "runs_ms": [round(t, 2) for t in totals], "phases_ms": phases[-1],
           "steps": check.args.steps, "size": check.args.size}
    check.results.setdefault("e2e", {})[label] = row
    print(label, json.dumps(row))
    return np.asarray(result, dtype=np.float64) / 255.0


def psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def section_steps(check, master, cuda, images):
    """Eager fp16, then the fast path (bf16 auto, fp16, bf16 without graph): guided step and end to end."""

    from spire_rt.backends.torch_backend import TorchBackend
    from spire_rt.fast import FastTorchBackend

    device = "cuda" if cuda else "cpu"
    feeds = step_feeds(master, check.args.size, device)
    eager_dtype = "fp16" if cuda else "fp32"

    model = copy.deepcopy(master)
    backend = TorchBackend(model, device=device, dtype=eager_dtype)
    time_step(check, backend, feeds, f"eager_{eager_dtype}", cuda)
    if check.left() > 60:
        images[f"eager_{eager_dtype}"] = time_e2e(check, model, backend, f"eager_{eager_dtype}", cuda)
    backend.close()
    del model, backend
    free_memory()

    model = copy.deepcopy(master)
    backend = FastTorchBackend(model, device=device)  # the dtype it picks (bf16 for SD 2.x) is the fast path
    dtype = SHORT_DTYPES[backend.describe()["dtype"]]
    label = f"fast_{dtype}"
    time_step(check, backend, feeds, label, cuda)
    images[label] = time_e2e(check, model, backend, label, cuda)
    check.results["fast_label"] = label
    backend.close()
    if check.left() > 60:  # the adaptor in turn with the UNet's encoder, on one stream (spire_rt/fast/overlap.py)
        backend = FastTorchBackend(model, device=device, dtype=dtype, overlap=False)
        time_step(check, backend, feeds, f"{label}_one_stream", cuda)
        images[f"{label}_one_stream"] = time_e2e(check, model, backend, f"{label}_one_stream", cuda)
        backend.close()
    if cuda and check.left() > 90 and not check.args.quick:  # the other dtype, and the picked one without the graph
        other = "fp16" if dtype == "bf16" else "bf16"
        for row_dtype, graph in ((other, True), (dtype, False)):
            backend = FastTorchBackend(model, device=device, dtype=row_dtype, cuda_graph=graph)
            time_step(check, backend, feeds, f"fast_{row_dtype}" + ("" if graph else "_nograph"), cuda)
            backend.close()
    del model
    free_memory()


def section_variants(check, master, cuda):
    """Rows that place the fast path's gains: the same CUDA graph with fewer of its parts, and variants that get a
    row before they become options (SDPA preferring cuDNN's attention). Each row is its own try."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from spire_rt.fast import FastTorchBackend

    if not cuda:
        return
    feeds = step_feeds(master, check.args.size, "cuda")
    cudnn_first = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                   SDPBackend.MATH]
    variants = [
        ("graph_only", {"kernels": "off"}, None),  # channels-last + CUDA graph, nothing patched
        ("reference_ops", {"kernels": "reference"}, None),  # every patch, PyTorch references for the kernels
        ("no_fused_qkv", {"fuse_qkv": False}, None),
        ("cudnn_attention", {}, cudnn_first),  # the default path (overlap on)
    ]
    model = copy.deepcopy(master)
    for suffix, options, sdpa_order in variants:
        if check.left() < 30:
            check.results["skipped"].append(f"variant {suffix}")
            continue
        backend = None
        try:
            # the graph captures whichever attention kernels the context picks
            with sdpa_kernel(sdpa_order, set_priority=True) if sdpa_order else contextlib.nullcontext():
                backend = FastTorchBackend(model, device="cuda", **options)
                dtype = SHORT_DTYPES[str(backend.dtype).replace("torch.", "")]
                time_step(check, backend, feeds, f"fast_{dtype}_{suffix}", cuda)
        except Exception as error:  # noqa: BLE001 (one variant's failure must not cost the others)
            traceback.print_exc()
            check.results["errors"][f"variant {suffix}"] = f"{type(error).__name__}: {error}"[:500]
        finally:
            if backend is not None:
                backend.close()
        free_memory()
    del model
    free_memory()


KERNEL_KINDS = (  # (kind, name fragments), first match wins: cuDNN's convolutions are "implicit gemm" kernels
    ("spire triton", ("_entry_", "_gn_", "_modulate", "_geglu")),
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("convolution", ("conv", "fprop", "implicit", "cudnn", "winograd")),
    ("gemm", ("gemm", "nvjet", "cutlass", "cublas", "sm90_xmma")),
    ("norm", ("norm",)),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, parts in KERNEL_KINDS if any(part in lowered for part in parts)), "other")


def section_profile(check, master, cuda, steps: int = 5):
    """Where the fast path's step spends GPU time: its kernels by kind (run without the CUDA graph, so the profiler
    sees each launch; kernel durations are the same, the gaps between them are not)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from spire_rt.fast import FastTorchBackend

    device = "cuda" if cuda else "cpu"
    model = copy.deepcopy(master)
    backend = FastTorchBackend(model, device=device, cuda_graph=False)
    feeds = step_feeds(master, check.args.size, device)
    for _ in range(3):
        backend.run("denoiser_guided", feeds)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            backend.run("denoiser_guided", feeds)
        if cuda:
            torch.cuda.synchronize()
    wanted = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    by_name: dict[str, list] = {}
    for event in prof.events():
        if event.device_type == wanted and (cuda or event.name.startswith("aten::")):
            entry = by_name.setdefault(event.name, [0, 0.0])
            entry[0] += 1
            entry[1] += event.time_range.elapsed_us() / 1e3
    kinds: dict[str, float] = {}
    for name, (_, ms) in by_name.items():
        kinds[kernel_kind(name)] = kinds.get(kernel_kind(name), 0.0) + ms / steps
    total = sum(kinds.values())
    top = sorted(by_name.items(), key=lambda item: -item[1][1])[:20]
    check.results["profile"] = {
        "backend": backend.describe(), "steps": steps, "kernel_ms_per_step": total,
        "kinds_ms_per_step": dict(sorted(kinds.items(), key=lambda item: -item[1])),
        "launches_per_step": sum(count for count, _ in by_name.values()) / steps,
        "top": [{"name": name[:160], "per_step": count / steps, "ms_per_step": ms / steps}
                for name, (count, ms) in top]}
    print(json.dumps({k: v for k, v in check.results["profile"].items() if k != "top"}, default=str))
    backend.close()
    del model, backend
    free_memory()


def section_compile(check, master, cuda):
    from spire_rt.fast import FastTorchBackend

    device = "cuda" if cuda else "cpu"
    model = copy.deepcopy(master)
    backend = FastTorchBackend(model, device=device, dtype="fp16" if cuda else "fp32", compile="default")
    time_step(check, backend, step_feeds(master, check.args.size, device), "compile_default_fp16", cuda)
    del model, backend
    free_memory()


def section_reference(check, master, cuda, images):
    """The fp32 path (TF32 off) once, same seed: the image every PSNR is taken against."""
    import torch

    from spire_rt.backends.torch_backend import TorchBackend

    device = "cuda" if cuda else "cpu"
    matmul_tf32, cudnn_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        backend = TorchBackend(master, device=device, dtype="fp32")
        reference = time_e2e(check, master, backend, "fp32_reference", cuda, runs=1)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
    check.results["psnr_db"] = {label: psnr(image, reference) for label, image in images.items()}
    print(json.dumps(check.results["psnr_db"]))


# --- the verdict ----------------------------------------------------------------------------------------------

def targets(results) -> dict:
    step, e2e, kernels = results.get("step", {}), results.get("e2e", {}), results.get("kernels", [])
    fast = results.get("fast_label")
    out = {}

    def ratio(a, b):
        return step[a]["ms"] / step[b]["ms"] if a in step and b in step else None

    if fast:
        eager = ratio("eager_fp16", fast)
        compiled = ratio("compile_default_fp16", fast)
        out["step_vs_eager_fp16 >= 2.5x"] = (eager, eager is not None and eager >= 2.5)
        out["step_vs_compile >= 1.2x"] = (compiled, compiled is not None and compiled >= 1.2)
        floor = step.get(fast, {}).get("x_floor_790")
        out["step_x_flop_floor <= 4"] = (floor, floor is not None and floor <= 4)
        total = e2e.get(fast, {}).get("ms")
        out["e2e_ms < 250"] = (total, total is not None and total < 250)
        db = results.get("psnr_db", {}).get(fast)
        out["psnr_db >= 35"] = (db, db is not None and db >= 35)
    entry = next((k for k in kernels if k["name"] == "decoder_entry 64x64 640+320" and "kernel_ms" in k), None)
    if entry:  # GPU time (graph replays) where measured: the fast path runs the kernels inside its CUDA graph
        pct = entry.get("graph_pct_copy", entry.get("pct_copy"))
        speedup = entry.get("graph_speedup", entry["speedup"])
        out["decoder_entry_pct_copy >= 80"] = (pct, (pct or 0) >= 80)
        out["decoder_entry_vs_eager >= 2x"] = (speedup, speedup >= 2)
    return {k: {"value": v, "pass": bool(p)} for k, (v, p) in out.items()}


def print_table(results):
    env = results.get("env", {})
    roof = results.get("roofline", {})
    print("\n" + "=" * 100)
    print(f"spire-rt gpu_check on {env.get('gpu') or 'CPU (smoke)'}: torch {env.get('torch')}, "
          f"triton {env.get('triton')}, CUDA {env.get('cuda')}")
    if env.get("smoke"):
        print("SMOKE RUN: tiny preset and shapes; kernels under the interpreter; no number below means anything")
    if roof:
        print(f"copy {roof['copy_gbps']:.0f} GB/s (read+write), bf16 matmul {roof['matmul_bf16_tflops']:.0f} TFLOP/s")
    tests = results.get("tests", {})
    print(f"tests: {tests.get('summary') or tests.get('returncode') or 'not run'}")
    if results.get("kernels"):
        print(f"\n{'kernel (bf16, channels-last, batch 2)':40} {'graph ms':>8} {'eager':>8} {'x eager':>7} "
              f"{'GB/s':>6} {'% copy':>6} | {'call ms':>7} {'x eager':>7}")
        for k in results["kernels"]:
            if "kernel_ms" not in k:
                print(f"{k['name']:40} error: {k.get('error', '?')[:50]}")
                continue
            eager_graph = min(k.get("eager_graph_ms", float("nan")), k.get("eager_nchw_graph_ms", float("inf")))
            print(f"{k['name']:40} {k.get('kernel_graph_ms', float('nan')):8.4f} {eager_graph:8.4f} "
                  f"{k.get('graph_speedup', float('nan')):7.2f} {k.get('graph_gbps', float('nan')):6.0f} "
                  f"{k.get('graph_pct_copy', float('nan')):6.1f} | {k['kernel_ms']:7.4f} {k['speedup']:7.2f}")
    if results.get("step"):
        print(f"\n{'guided step (UNet b2 + adaptor b1)':42} {'ms':>8} {'x floor':>8} {'first s':>8} {'finite':>7}")
        for label, row in results["step"].items():
            print(f"{label:42} {row['ms']:8.2f} {row['x_floor_790']:8.2f} {row['first_call_s']:8.1f} "
                  f"{row['finite']!s:>7}")
    profile = results.get("profile")
    if profile:
        kinds = ", ".join(f"{kind} {ms:.2f}" for kind, ms in profile["kinds_ms_per_step"].items())
        print(f"\nfast step, GPU kernel time by kind (ms, no graph): {kinds}; total {profile['kernel_ms_per_step']:.2f}"
              f" in {profile['launches_per_step']:.0f} launches")
    if results.get("e2e"):
        print(f"\n{'end to end (size, steps)':42} {'ms':>8}  PSNR vs fp32")
        for label, row in results["e2e"].items():
            db = results.get("psnr_db", {}).get(label)
            print(f"{label + ' (' + str(row['size']) + ', ' + str(row['steps']) + ')':42} {row['ms']:8.1f}  "
                  f"{'' if db is None else f'{db:.1f} dB'}")
    if results.get("targets"):
        print("\ntargets:")
        for name, t in results["targets"].items():
            value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
            print(f"  {'PASS' if t['pass'] else 'FAIL'}  {name:36} {value}")
    if results.get("errors"):
        print("\nerrors: " + "; ".join(f"{k}: {v[:120]}" for k, v in results["errors"].items()))
    if results.get("skipped"):
        print("skipped (time budget): " + ", ".join(results["skipped"]))


def main(argv=None) -> int:
    args = parse_args(argv)
    earlier = [name for name in ("gpu_check.json", "gpu_check.log") if (Path(args.out) / name).exists()]
    if earlier:  # the JSON would be replaced and the log appended to: an earlier run's record would be lost
        print(f"{args.out} already holds {' and '.join(earlier)} from an earlier run; give a fresh --out",
              file=sys.stderr)
        return 2
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        if not args.smoke:
            print("no CUDA device: run with --smoke for the CPU check of this script", file=sys.stderr)
            return 2
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before spire_rt.kernels is imported
    check = Check(args)
    log_path = check.out / "gpu_check.log"
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Tee(stdout, log_path), Tee(stderr, log_path)
    try:
        check.section("env", lambda: section_env(check))
        roof = check.section("roofline", lambda: section_roofline(check, cuda)) or {}
        check.section("kernels", lambda: section_kernels(check, cuda, roof.get("copy_gbps")), needs_s=30)
        tests = start_tests(check, cuda) if check.left() > 240 or args.smoke else None
        master = check.section("build_model", lambda: build_model(check), needs_s=60)
        if tests is not None:
            check.section("tests", lambda: finish_tests(check, tests, min(300.0, check.left() - 150)))
        images = {}
        if master is not None:
            check.section("steps", lambda: section_steps(check, master, cuda, images), needs_s=60)
            if not args.quick:
                check.section("variants", lambda: section_variants(check, master, cuda), needs_s=60)
            if args.run_compile:
                check.section("compile", lambda: section_compile(check, master, cuda), needs_s=100)
            check.section("reference", lambda: section_reference(check, master, cuda, images), needs_s=20)
            if not args.quick:
                check.section("profile", lambda: section_profile(check, master, cuda), needs_s=30)
        check.results["targets"] = targets(check.results)
        check.results["total_s"] = round(time.monotonic() - check.started, 1)
        check.save()
        print_table(check.results)
        print(f"\nJSON: {check.out / 'gpu_check.json'}  log: {log_path}")
    finally:
        sys.stdout, sys.stderr = stdout, stderr
    return 0


if __name__ == "__main__":
    sys.exit(main())
