"""The ONNX Runtime backend: the exported graphs run by ONNX Runtime, behind the same `run(network, feeds)`.

    backend = OnnxRuntimeBackend(model)                  # CPU execution provider, fp32
    backend.run("denoiser", feeds) -> {"model_output": float32 tensor}

On first use of a network its graph is exported into the artifact cache (spire_rt.export.artifacts; keyed by the
model's weights, precision, shapes and library versions), then loaded; later runs load it directly. The graph
ONNX Runtime optimised is cached beside it (keyed by the ORT version, the execution providers, the optimisation
level and the CPU), so a later session skips the optimisation passes. Feeds are checked against the network's
descriptor (one-line ShapeError outside the exported range) and bound by pointer (IO binding): torch tensors in,
preallocated torch tensors out, no copies.

Execution providers: CPU by default; CUDA (device cuda) or TensorRT where the installed onnxruntime has them.
Attention runs as ONNX Runtime's fused MultiHeadAttention op (the `.mha` graphs, spire_rt.export.attention) in
fp32; `attention="standard"` runs the portable graphs. `quantize="int8"` runs a dynamically quantised copy
(int8 Linear weights, activations quantised per call): opt-in, because it costs quality and, on the CPUs we
measured, no time (spire-rt bench reports both).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import OptionError
from ..export import ExportError
from ..export.artifacts import DEFAULT_OPSET, ArtifactKey, Artifacts
from ..export.descriptors import NetworkDescriptor, ShapeProfile, descriptor
from ..export.exporter import artifact_id, ensure_exported, has_fusable_attention
from ..models.spire_model import SpireModel
from .base import resolve_device

log = logging.getLogger("spire_rt.onnxruntime")

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
OPT_LEVELS = ("disable", "basic", "extended", "all")
QUANTIZATIONS = (None, "int8")
# What quantize_int8 does, recorded with each int8 graph: a graph quantised another way (full-range weights, before
# d842f18) is quantised again instead of being trusted.
INT8_RECIPE = "dynamic s8 per-channel reduce_range MatMul/Gemm"
ATTENTIONS = ("fused", "standard")  # ONNX Runtime's MultiHeadAttention op, or plain MatMul/Softmax/MatMul
NUMPY_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32}
ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(int64)": torch.int64,
             "tensor(int32)": torch.int32}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise OptionError("the onnxruntime backend needs onnxruntime: pip install 'spire-rt[onnx]'") from None
    return onnxruntime


def resolve_precision(dtype, device: torch.device) -> str:
    """fp32 on the CPU, fp16 on CUDA, unless asked; fp16 on the CPU is allowed (ONNX Runtime runs it, slowly)."""
    if dtype is None:
        return "fp16" if device.type == "cuda" else "fp32"
    names = {torch.float32: "fp32", torch.float16: "fp16", "fp32": "fp32", "fp16": "fp16", "float32": "fp32",
             "float16": "fp16"}
    if dtype not in names:
        raise OptionError(f"the onnxruntime backend runs fp32 or fp16 graphs, not {dtype}")
    return names[dtype]


def resolve_providers(requested: Iterable[str] | str | None, device: torch.device) -> list[str]:
    """Execution provider names, in priority order, ending with the CPU fallback; one-line errors otherwise."""
    ort = import_onnxruntime()
    available = ort.get_available_providers()
    if requested is None:
        requested = ["cuda"] if device.type == "cuda" else ["cpu"]
    elif isinstance(requested, str):
        requested = [part for part in requested.split(",") if part.strip()]
    known = {name.lower(): name for name in ort.get_all_providers()}
    resolved = []
    for name in requested:
        key = name.strip().lower()
        full = PROVIDER_ALIASES.get(key) or known.get(key) or known.get(key + "executionprovider")
        if full is None:
            raise OptionError(f"unknown execution provider {name!r}; use one of "
                              f"{', '.join(sorted(PROVIDER_ALIASES))} or an ONNX Runtime provider name")
        if full not in available:
            raise OptionError(f"execution provider {full} is not available in this onnxruntime build "
                              f"(available: {', '.join(available)})")
        if full != "CPUExecutionProvider" and device.type != "cuda" and full in (
                "CUDAExecutionProvider", "TensorrtExecutionProvider"):
            raise OptionError(f"execution provider {full} needs --device cuda")
        resolved.append(full)
    if "CPUExecutionProvider" not in resolved:
        resolved.append("CPUExecutionProvider")
    return list(dict.fromkeys(resolved))


def cpu_description() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> str:
    return cpuinfo_field("flags") or platform.machine()


def cpuinfo_field(key: str) -> str | None:
    """The first `key: value` of /proc/cpuinfo (Linux), or None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def session_options(opt_level: str = "all", threads: int | None = None, spinning: bool = True,
                    optimized_path: Path | None = None, profile_prefix: str | None = None):
    ort = import_onnxruntime()
    if opt_level not in OPT_LEVELS:
        raise OptionError(f"unknown graph optimisation level {opt_level!r}; use one of {', '.join(OPT_LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = int(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3  # errors only: the CPU EP's per-node placement notes are noise
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
        # Large graphs keep their weights in a side file, as the source graph does (2 GB protobuf limit).
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         optimized_path.name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                         str(1 << 20))
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def create_session(path: Path, providers: list, options=None):
    """An InferenceSession, or a one-line ExportError naming the file and what is wrong with it."""
    ort = import_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: ONNX graph is missing")
    try:
        return ort.InferenceSession(str(path), options or session_options(), providers=providers)
    except Exception as error:  # noqa: BLE001  (onnxruntime raises Fail, InvalidProtobuf, RuntimeException...)
        message = " ".join(str(error).split())
        raise ExportError(f"{path}: ONNX Runtime cannot load it: {message[:300]}") from None


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the MatMul/Gemm weights (per channel); activations quantised at run time.

    Convolutions stay float: quantising them too (ConvInteger) made the tiny denoiser 2.4x slower on our CPU and
    its error 5x larger (4% of the output's range instead of 0.8%). The weights use 7 of their 8 bits
    (`reduce_range`): on CPUs without VNNI (AVX2, AVX-512 before VNNI) ONNX Runtime's u8 x s8 kernel adds pairs of
    products in saturating int16, and with full-range weights the tiny text encoder's output was off by 27% of its
    largest value on an AVX2-only EPYC (tests/backends/test_onnxruntime_backend.py allows 10%).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs a pre-processing suggestion on the root logger
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=["MatMul", "Gemm"],
                         use_external_data_format=(source.parent / (source.name + ".data")).exists(),
                         extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model: SpireModel, device: str | torch.device = "cpu", dtype=None, *,
                 cache: str | os.PathLike | None = None, artifacts: Artifacts | None = None,
                 profile: ShapeProfile | None = None, providers: Iterable[str] | str | None = None,
                 threads: int | None = None, opt_level: str = "all", cache_optimized: bool = True,
                 io_binding: bool = True, quantize: str | None = None, spinning: bool = True,
                 attention: str | None = None,
                 export: bool = True, opset: int = DEFAULT_OPSET, profile_prefix: str | None = None):
        self.device = resolve_device(device)
        self.precision = resolve_precision(dtype, self.device)
        self.providers = resolve_providers(providers, self.device)
        if quantize not in QUANTIZATIONS:
            raise OptionError(f"unknown quantisation {quantize!r}; use int8 or none")
        if quantize and self.precision != "fp32":
            raise OptionError("int8 quantisation starts from the fp32 graphs; use dtype fp32 with it")
        if opt_level not in OPT_LEVELS:
            raise OptionError(f"unknown graph optimisation level {opt_level!r}; use one of {', '.join(OPT_LEVELS)}")
        if attention is None:  # ORT's fused attention kernel where it has one; TensorRT fuses the plain graph
            attention = "fused" if self.precision == "fp32" and "TensorrtExecutionProvider" not in self.providers \
                else "standard"
        if attention not in ATTENTIONS:
            raise OptionError(f"unknown attention {attention!r}; use one of {', '.join(ATTENTIONS)}")
        if attention == "fused" and self.precision != "fp32":
            raise OptionError("fused attention runs in fp32 graphs only; use attention='standard' with fp16")
        self.attention = attention
        self.model = model
        if artifacts is not None and profile is not None and profile != artifacts.key.profile:
            raise OptionError("give either artifacts or a shape profile: the artifacts carry their own")
        if artifacts is not None and artifacts.key.precision != self.precision:
            raise OptionError(f"these artifacts hold {artifacts.key.precision} graphs, not {self.precision}")
        self.profile = profile or (artifacts.key.profile if artifacts else ShapeProfile.default(model))
        self.profile.validate(model.pixel_multiple)
        self.artifacts = artifacts or Artifacts.in_cache(
            ArtifactKey.for_model(model, self.precision, self.profile, opset), cache)
        self.threads = threads
        self.opt_level = opt_level
        self.cache_optimized = cache_optimized and opt_level != "disable"
        self.io_binding = io_binding
        self.quantize = quantize
        self.spinning = spinning
        self.export = export
        self.profile_prefix = profile_prefix
        self.sessions: dict[str, object] = {}
        self.descriptors: dict[str, NetworkDescriptor] = {}
        self.load_seconds: dict[str, float] = {}

    # --- sessions ---------------------------------------------------------------------------------------------
    def descriptor(self, network: str) -> NetworkDescriptor:
        if network not in self.descriptors:
            self.descriptors[network] = descriptor(network, self.model, self.profile)
        return self.descriptors[network]

    def load(self, networks: Iterable[str]) -> None:
        """Create the sessions now (exporting what is missing) instead of on first use."""
        for network in networks:
            self.session(network)

    def session(self, network: str):
        if network not in self.sessions:
            started = time.perf_counter()
            self.sessions[network] = self.open_session(network)
            self.load_seconds[network] = time.perf_counter() - started
        return self.sessions[network]

    def graph_artifact(self, network: str) -> str:
        """The artifact id whose graph this backend runs for `network` (exported, then quantised if asked)."""
        fused = self.attention == "fused" and has_fusable_attention(self.model, network)
        base = artifact_id(network, fused)
        if self.export:
            ensure_exported(self.model, self.artifacts, [network], fused=fused)
        else:
            self.artifacts.require(base)
        if not self.quantize:
            return base
        artifact = f"{base}.{self.quantize}"
        reason = self.artifacts.problem(artifact)
        if reason is None and self.artifacts.entry(artifact).get("recipe") != INT8_RECIPE:
            reason = "quantised by another recipe"
        if reason:
            if not self.export:
                raise ExportError(f"{self.artifacts.onnx_path(artifact)}: {reason}")
            log.info("quantising %s to %s (%s)", network, self.quantize, reason)
            with self.artifacts.staging(artifact) as stage:
                quantize_int8(self.artifacts.onnx_path(base), stage / f"{artifact}.onnx")
                info = {"kind": self.quantize, "network": network, "recipe": INT8_RECIPE}
                self.artifacts.commit(artifact, stage, info, source=base)
        return artifact

    def optimized_tag(self) -> str:
        ort = import_onnxruntime()
        text = "|".join([ort.__version__, ",".join(self.providers), self.opt_level, cpu_description(), cpu_flags()])
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def open_session(self, network: str):
        source = self.graph_artifact(network)
        providers = self.provider_options(network, source)
        if not self.cache_optimized:
            return create_session(self.artifacts.require(source), providers, self.options())
        optimized = f"{source}.ort-{self.optimized_tag()}"
        if self.artifacts.problem(optimized) is None:
            # Already optimised for this ORT, providers and CPU: loading skips the optimisation passes.
            return create_session(self.artifacts.require(optimized), providers, self.options(level="disable"))
        with self.artifacts.staging(optimized) as stage:
            target = stage / f"{optimized}.onnx"
            try:
                session = create_session(self.artifacts.require(source), providers, self.options(optimized=target))
            except ExportError as error:  # saving the optimised graph is a cache: never a reason to fail
                log.warning("not caching the optimised %s graph: %s", network, error)
                return create_session(self.artifacts.require(source), providers, self.options())
            if target.exists():
                self.artifacts.commit(optimized, stage, {"kind": "ort-optimized", "network": network,
                                                         "opt_level": self.opt_level, "providers": self.providers},
                                      source=source)
        return session

    def options(self, level: str | None = None, optimized: Path | None = None):
        return session_options(level or self.opt_level, self.threads, self.spinning, optimized, self.profile_prefix)

    def provider_options(self, network: str, artifact: str) -> list:
        """Providers with their options: TensorRT gets the descriptor's min/opt/max shapes and caches."""
        providers = []
        for name in self.providers:
            if name == "TensorrtExecutionProvider":
                desc = self.descriptor(network)
                shapes = {which: desc.shapes(which) for which in ("min", "opt", "max")}
                unused = set((self.artifacts.entry(artifact) or {}).get("unused_inputs", ()))
                inputs = [item for item in desc.input_names if item not in unused]

                def profile(which, shapes=shapes, inputs=inputs):
                    return ",".join(f"{item}:{'x'.join(map(str, shapes[which][item]))}" for item in inputs)

                cache = self.artifacts.root / "tensorrt"
                cache.mkdir(parents=True, exist_ok=True)
                providers.append((name, {
                    "device_id": self.device.index or 0, "trt_fp16_enable": self.precision == "fp16",
                    "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                    "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
                    "trt_profile_min_shapes": profile("min"), "trt_profile_opt_shapes": profile("opt"),
                    "trt_profile_max_shapes": profile("max")}))
            elif name == "CUDAExecutionProvider":
                providers.append((name, {"device_id": self.device.index or 0}))
            else:
                providers.append(name)
        return providers

    # --- running ----------------------------------------------------------------------------------------------
    def run(self, network: str, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        desc = self.descriptor(network)
        bound = desc.check_feeds(feeds)
        session = self.session(network)
        inputs = {item.name: ORT_TYPES.get(item.type) for item in session.get_inputs()}
        prepared = {}
        for name, dtype in inputs.items():
            if dtype is None:
                raise ExportError(f"{network}: graph input {name} has unsupported type")
            prepared[name] = feeds[name].to(device=self.device, dtype=dtype).contiguous()
        if not self.io_binding:
            arrays = {name: tensor.cpu().numpy() for name, tensor in prepared.items()}
            results = session.run(list(desc.output_names), arrays)
            return {name: torch.from_numpy(np.ascontiguousarray(value)).to(self.device).float()
                    for name, value in zip(desc.output_names, results)}
        binding = session.io_binding()
        device_type = "cuda" if self.device.type == "cuda" else "cpu"
        device_id = self.device.index or 0
        for name, tensor in prepared.items():
            binding.bind_input(name, device_type, device_id, NUMPY_TYPES[tensor.dtype], list(tensor.shape),
                               tensor.data_ptr())
        shapes = desc.output_shapes(bound)
        outputs = {}
        output_types = {item.name: ORT_TYPES.get(item.type, torch.float32) for item in session.get_outputs()}
        for name in desc.output_names:
            if shapes is None:
                binding.bind_output(name, device_type, device_id)
                continue
            outputs[name] = torch.empty(shapes[name], dtype=output_types[name], device=self.device)
            binding.bind_output(name, device_type, device_id, NUMPY_TYPES[output_types[name]], list(shapes[name]),
                                outputs[name].data_ptr())
        session.run_with_iobinding(binding)
        if shapes is None:
            values = binding.copy_outputs_to_cpu()
            outputs = {name: torch.from_numpy(value).to(self.device) for name, value in zip(desc.output_names, values)}
        return {name: value.float() for name, value in outputs.items()}

    def release(self, network: str) -> None:
        """Drop one network's session (its memory); the next run of it loads the cached graph again."""
        self.sessions.pop(network, None)

    def close(self) -> None:
        self.sessions.clear()
