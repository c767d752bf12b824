"""Compile the kernels' launches for sm_90 (H100) on a machine without a GPU, and report what the compiler made.

    python tests/kernels/sm90_compile.py      # one JSON line per distinct compiled variant

The launchers run on CPU tensors with every kernel replaced by a recorder, so the compiled variants are exactly
the launches the SD 2.1 shapes (and a few odd test shapes) make. Each is specialised as Triton's JIT does (pointers
and integers divisible by 16 marked so, integers equal to 1 made constants), compiled to PTX and a cubin by the
ptxas bundled with Triton, and read back: global load/store widths from the PTX, registers and local memory from
cuobjdump. Run without TRITON_INTERPRET (the interpreter's functions cannot be compiled).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

KERNEL_MODULES = ("modulate", "decoder_entry", "groupnorm_silu", "geglu")
TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def record_launches():
    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))

    modules = [importlib.import_module(f"spire_rt.kernels.{name}") for name in KERNEL_MODULES]
    for module in modules:
        module.check_launchable = lambda *tensors: None
        for name, value in list(vars(module).items()):
            if isinstance(value, triton.runtime.jit.JITFunction) and name.endswith("_kernel"):
                setattr(module, name, Recorder(value))
    modulate, entry, gn, geglu = modules

    def t(*shape, channels_last=True, dtype=torch.bfloat16):
        x = torch.randn(*shape, dtype=dtype)
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x

    one = torch.ones(1, 1, 1, 1, dtype=torch.bfloat16)
    for h_channels, s_channels, side in ((640, 320, 64), (1280, 640, 16), (1280, 1280, 8)):
        c = h_channels + s_channels
        entry.decoder_entry(t(2, h_channels, side, side), t(2, s_channels, side, side),
                            t(2, 2 * s_channels, side, side), one, t(c), t(c), 32)
    gn.groupnorm_silu(t(2, 320, 64, 64), t(320), t(320), 32, shift=t(2, 320))
    gn.groupnorm_silu(t(2, 640, 32, 32), t(640), t(640), 32, silu=False)
    gn.groupnorm_silu(t(1, 128, 512, 512), t(128), t(128), 32)  # the VAE decoder's top level
    modulate.modulate(t(2, 320, 64, 64), t(2, 640, 64, 64), one)
    geglu.geglu(t(2, 4096, 2560))
    half = torch.float16
    entry.decoder_entry(t(3, 5, 5, 7, channels_last=False, dtype=half), t(3, 7, 5, 7, channels_last=False, dtype=half),
                        t(1, 14, 5, 7, channels_last=False, dtype=half), 0.7, None, None, 4, strategy="split",
                        block_elements=64)
    gn.groupnorm_silu(t(3, 12, 5, 7, channels_last=False, dtype=torch.float32), None, None, 4, strategy="single")
    for strategy in ("single", "split"):  # one channel per group, and one position per image: Triton makes 1s constant
        gn.groupnorm_silu(t(2, 10, 1, 9, channels_last=False, dtype=torch.float32), None, None, 10, strategy=strategy)
        entry.decoder_entry(t(2, 4, 1, 1), t(2, 4, 1, 1), t(1, 8, 1, 1), one, None, None, 8, strategy=strategy)
    return launches


def specialise(kernel, args, kwargs):
    kwargs = dict(kwargs)
    num_warps = kwargs.pop("num_warps", 4)
    values = list(args) + [kwargs[name] for name in kernel.arg_names[len(args):]]
    signature, constexprs, attrs = {}, {}, {}
    for index, (param, value) in enumerate(zip(kernel.params, values)):
        name = param.name
        if param.is_constexpr or (isinstance(value, int) and not isinstance(value, bool) and value == 1):
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + TYPES[value.dtype]
            if value.data_ptr() % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, int):
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32"
    return signature, constexprs, attrs, num_warps


def main() -> int:
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    seen = set()
    for kernel, args, kwargs in record_launches():
        signature, constexprs, attrs, num_warps = specialise(kernel, args, kwargs)
        key = (kernel.__name__, tuple(signature.items()), tuple(sorted(constexprs.items())), tuple(attrs), num_warps)
        if key in seen:
            continue
        seen.add(key)
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
        ptx = compiled.asm["ptx"]
        with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
            cubin.write(compiled.asm["cubin"])
            cubin.flush()
            usage = subprocess.run([cuobjdump, "--dump-resource-usage", cubin.name], capture_output=True,
                                   text=True, check=True).stdout
        resources = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
        print(json.dumps({
            "kernel": kernel.__name__,
            "constexprs": {k: v for k, v in constexprs.items() if k.isupper()},
            "dtype": next((v for k, v in signature.items() if k.endswith("_ptr")), None),
            "num_warps": num_warps,
            "loads": sorted(set(re.findall(r"ld\.global[.\w]*", ptx))),
            "stores": sorted(set(re.findall(r"st\.global[.\w]*", ptx))),
            **{k.lower(): int(v) for k, v in resources.items()},
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
