"""ONNX Runtime against PyTorch, per network and output, on fresh random inputs (`spire-rt export --check`).

    error = max |ort - torch| / max |torch|        (relative to the output's largest magnitude)

fails above 1e-4 for fp32 graphs and 2e-2 for fp16 ones. The PyTorch side is the model at its own precision
(float32) on the same inputs, so an fp16 graph is held against the float32 truth. References are computed for
every network first; with `release_model` the model's weights are then dropped, so a large model's PyTorch copy
and its ONNX Runtime sessions are never in memory together.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..models.spire_model import SpireModel
from . import ExportError
from .artifacts import Artifacts
from .descriptors import descriptor

TOLERANCES = {"fp32": 1e-4, "fp16": 2e-2}


@dataclass
class OutputCheck:
    network: str
    point: str  # the profile point the inputs were drawn at: "opt", "min"
    output: str
    shape: tuple[int, ...]
    max_abs: float
    rel: float
    tolerance: float
    finite: bool

    @property
    def passed(self) -> bool:
        return self.finite and self.rel <= self.tolerance

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        shape = "x".join(map(str, self.shape))
        return (f"{self.network:<20}{self.point:<5}{self.output:<16}{shape:<16}max abs {self.max_abs:.3e}  "
                f"rel {self.rel:.3e}  (tol {self.tolerance:g})  {verdict}")


def check_points(profile) -> tuple[str, ...]:
    """The opt point always; the min point too when the graph is dynamic (a second size through one graph)."""
    return ("opt",) if profile.min_size == profile.max_size and profile.min_batch == profile.max_batch \
        else ("opt", "min")


def reference_outputs(model: SpireModel, artifacts: Artifacts, network: str, seed: int):
    """The network's PyTorch outputs on fresh inputs at each check point (the eager attention processors)."""
    desc = descriptor(network, model, artifacts.key.profile)
    module = desc.module()
    cases = []
    for index, point in enumerate(check_points(artifacts.key.profile)):
        feeds = desc.sample_inputs(point, seed=seed + index)
        with torch.inference_mode():
            outputs = module(*[feeds[name] for name in desc.input_names])
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        cases.append((point, feeds, {name: out.float() for name, out in zip(desc.output_names, outputs)}))
    return desc, cases


def check_artifacts(model: SpireModel, artifacts: Artifacts, networks, seed: int | None = None,
                    release_model: bool = False, report=print, threads: int | None = None,
                    fused: bool = False) -> list[OutputCheck]:
    """Compare every network's graph with PyTorch; returns every output's errors (see `OutputCheck.passed`).

    `fused`: check the fused-attention flavour where a network has one (spire_rt.export.attention).
    """
    from ..backends.onnxruntime_backend import create_session, session_options
    from .exporter import artifact_id, has_fusable_attention

    seed = int(time.time_ns() % 2**31) if seed is None else seed
    report(f"checking {len(networks)} network(s) against PyTorch, inputs from seed {seed}")
    tolerance = TOLERANCES[artifacts.key.precision]
    graphs = {network: artifact_id(network, fused and has_fusable_attention(model, network)) for network in networks}
    references = {network: reference_outputs(model, artifacts, network, seed) for network in networks}
    if release_model:
        for module in model.modules().values():
            module.to("meta")  # the weights' memory goes back before the sessions take theirs
        gc.collect()
    results = []
    for network, (desc, cases) in references.items():
        session = create_session(artifacts.require(graphs[network], full=True), ["CPUExecutionProvider"],
                                 session_options(threads=threads))
        graph_inputs = {item.name: item.type for item in session.get_inputs()}
        for point, feeds, expected in cases:
            arrays = {}
            for name, kind in graph_inputs.items():
                value = feeds[name].numpy()
                arrays[name] = value.astype(np.float16) if kind == "tensor(float16)" else value
            got = session.run(list(desc.output_names), arrays)
            for name, value in zip(desc.output_names, got):
                truth = expected[name].numpy().astype(np.float64)
                value = value.astype(np.float64)
                finite = bool(np.isfinite(value).all())
                max_abs = float(np.abs(value - truth).max()) if finite else float("inf")
                scale = max(float(np.abs(truth).max()), 1e-12)
                results.append(OutputCheck(graphs[network], point, name, tuple(value.shape), max_abs,
                                           max_abs / scale, tolerance, finite))
                report(results[-1].line())
        del session
        gc.collect()
    return results


def require_passed(results: list[OutputCheck]) -> None:
    failed = [result for result in results if not result.passed]
    if failed:
        worst = max(failed, key=lambda result: result.rel)
        raise ExportError(f"check failed for {len(failed)} output(s); worst: {worst.network}/{worst.output} rel "
                          f"{worst.rel:.3e} > {worst.tolerance:g}" + ("" if worst.finite else " (non-finite values)"))
