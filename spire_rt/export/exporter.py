"""torch -> ONNX for one network, read entirely from its descriptor; the result is committed to the artifacts.

    export_network(descriptor, artifacts, precision) -> manifest entry
    ensure_exported(model, artifacts, networks)       -> {network: onnx path}, exporting only what is not valid

The TorchScript exporter (`dynamo=False`) is used: it traces the UNet's data-dependent shapes (upsampling to the
skip's size) into symbolic graph arithmetic, so one graph serves every size in the profile, where the dynamo
exporter specialises them. Graphs whose weights pass protobuf's 2 GB limit are written by torch as one file per
tensor; those are gathered into a single `<network>.onnx.data` beside the graph.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path

import onnx
import torch
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from ..models.spire_model import SpireModel
from . import ExportError
from .artifacts import Artifacts
from .attention import FLAVOUR, attention_modules, fused_attention
from .descriptors import NetworkDescriptor, ShapeProfile, descriptor

log = logging.getLogger("spire_rt.export")


def cast_feeds(feeds: dict[str, torch.Tensor], float_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {name: value.to(float_dtype) if value.is_floating_point() else value for name, value in feeds.items()}


def artifact_id(network: str, fused: bool = False) -> str:
    """The artifact a network's graph is stored under: `denoiser`, or `denoiser.mha` with fused attention."""
    return f"{network}.{FLAVOUR}" if fused else network


def has_fusable_attention(model: SpireModel, network: str) -> bool:
    desc = descriptor(network, model, ShapeProfile.default(model))
    return any(attention_modules(getattr(model, name)) for name in desc.uses)


def export_network(desc: NetworkDescriptor, artifacts: Artifacts, precision: str | None = None,
                   fused: bool = False) -> dict:
    """Trace `desc`'s network to ONNX in a staging folder, check it, and commit it. Returns the manifest entry.

    `fused`: attention as ONNX Runtime's MultiHeadAttention op (spire_rt.export.attention), fp32 graphs only.
    """
    precision = precision or artifacts.key.precision
    name = desc.name
    artifact = artifact_id(name, fused)
    if fused and desc.graph_dtype(precision) != torch.float32:
        raise ExportError(f"{name}: fused attention is exported for fp32 graphs only")
    started = time.perf_counter()
    with artifacts.staging(artifact) as stage:
        path = stage / f"{artifact}.onnx"
        dtype = desc.graph_dtype(precision)
        module = desc.export_module(precision)
        feeds = cast_feeds(desc.sample_inputs("opt"), dtype)
        args = tuple(feeds[input_name] for input_name in desc.input_names)
        try:
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), \
                    (fused_attention(module) if fused else contextlib.nullcontext()):
                warnings.simplefilter("ignore")  # tracer and deprecation chatter about the TorchScript exporter
                torch.onnx.export(module, args, str(path), dynamo=False, input_names=list(desc.input_names),
                                  output_names=list(desc.output_names), dynamic_axes=desc.dynamic_axes(),
                                  opset_version=artifacts.key.opset, do_constant_folding=True,
                                  custom_opsets={"com.microsoft": 1} if fused else None)
        except Exception as error:  # the exporter raises many types; all mean the network did not export
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ExportError(f"{name}: torch.onnx.export failed: {reason}") from error
        finally:
            del module
        external = gather_external_data(path, artifacts.data_name(artifact))
        try:
            onnx.checker.check_model(str(path))
            onnx.shape_inference.infer_shapes_path(str(path), str(path))
        except Exception as error:
            raise ExportError(f"{name}: exported graph fails the ONNX checker: {str(error).splitlines()[0]}") \
                from error
        graph = onnx.load(str(path), load_external_data=False).graph
        inputs = [value.name for value in graph.input]
        outputs = [value.name for value in graph.output]
        if outputs != list(desc.output_names) or any(item not in desc.input_names for item in inputs):
            raise ExportError(f"{name}: exported graph's tensors {inputs} -> {outputs} do not match its "
                              f"descriptor {list(desc.input_names)} -> {list(desc.output_names)}")
        info = {
            "kind": "onnx",
            "network": name,
            "attention": "com.microsoft MultiHeadAttention (ONNX Runtime only)" if fused else "standard ONNX ops",
            "precision": precision,
            "graph_dtype": str(dtype).removeprefix("torch."),
            "opset": artifacts.key.opset,
            "external_data": external,
            # Inputs the network does not use (guidance_scale when unguided) are left out of the graph by torch.
            "unused_inputs": [item for item in desc.input_names if item not in inputs],
            "descriptor": desc.to_dict(precision),
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        return artifacts.commit(artifact, stage, info)


def gather_external_data(path: Path, data_name: str) -> bool:
    """Put every externally stored tensor of the graph at `path` into one file `data_name` beside it.

    torch writes a model over 2 GB as one file per tensor; this streams them into one file (memory stays flat),
    repoints the graph at it and deletes the pieces. Returns whether the graph has external data.
    """
    model = onnx.load(str(path), load_external_data=False)
    tensors = [tensor for tensor in iter_tensors(model.graph) if uses_external_data(tensor)]
    if not tensors:
        return False
    folder = path.parent
    pieces = set()
    offset = 0
    with open(folder / data_name, "wb") as out:
        for tensor in tensors:
            info = ExternalDataInfo(tensor)
            source = folder / info.location
            if source.name == data_name or source.parent.resolve() != folder.resolve():
                raise ExportError(f"{path}: unexpected external data location {info.location!r}")
            with open(source, "rb") as handle:
                handle.seek(info.offset or 0)
                data = handle.read(info.length) if info.length else handle.read()
            padding = -offset % 4096  # page-aligned, so ONNX Runtime can map the weights
            out.write(b"\0" * padding)
            offset += padding
            out.write(data)
            del tensor.external_data[:]
            for field, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(data)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = field, value
            offset += len(data)
            pieces.add(source)
    onnx.save_model(model, str(path))
    for piece in pieces:
        piece.unlink()
    return True


def iter_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from iter_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from iter_tensors(subgraph)


def ensure_exported(model: SpireModel, artifacts: Artifacts, networks, force: bool = False,
                    report=None, fused: bool = False) -> dict[str, Path]:
    """Each network's graph path, exporting those that are missing, corrupt or stale (and all with `force`).

    With `fused`, networks with diffusers attention get their fused-attention flavour (the others, the plain one).
    """
    report = report or log.info
    paths = {}
    for network in networks:
        flavour = fused and has_fusable_attention(model, network)
        artifact = artifact_id(network, flavour)
        reason = "forced" if force else artifacts.problem(artifact)
        if reason:
            report(f"exporting {artifact} ({reason}) to {artifacts.root}")
            entry = export_network(descriptor(network, model, artifacts.key.profile), artifacts, fused=flavour)
            report(f"exported {artifact} in {entry['export_seconds']:.1f} s")
        paths[network] = artifacts.require(artifact)
    return paths
