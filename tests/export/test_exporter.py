"""Export + check of every network, artifact reuse and rebuild, interrupted exports, external data, fp16 guards."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import onnx
import pytest
import torch
from conftest import randomize_fidelity
from onnx import TensorProto, helper, numpy_helper

from spire_rt.backends.onnxruntime_backend import create_session
from spire_rt.export import ExportError
from spire_rt.export.artifacts import ArtifactKey, Artifacts, file_sha256, library_versions
from spire_rt.export.check import check_artifacts, require_passed
from spire_rt.export.descriptors import ALL_NETWORKS, ShapeProfile
from spire_rt.export.exporter import artifact_id, ensure_exported, gather_external_data, has_fusable_attention


def quiet(_line):
    pass


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused-attention"])
def test_every_network_matches_pytorch_at_two_sizes(tiny_onnx, fused):
    """Each graph against PyTorch at the profile's opt (32 px) and min (16 px) sizes: one graph, two shapes."""
    model, artifacts = tiny_onnx
    networks = ("denoiser", "denoiser_guided", "adaptor") if fused else ALL_NETWORKS  # the others have no attention
    results = check_artifacts(model, artifacts, networks, seed=1, report=quiet, fused=fused)
    require_passed(results)
    graphs = {network: artifact_id(network, fused and has_fusable_attention(model, network))
              for network in ALL_NETWORKS}
    assert {(result.network, result.point) for result in results} == {
        (graphs[network], point) for network in networks for point in ("opt", "min")}
    assert fused == (graphs["denoiser_guided"] == "denoiser_guided.mha")
    ops = {node.op_type for node in onnx.load(str(artifacts.onnx_path(graphs["denoiser_guided"]))).graph.node}
    assert ("MultiHeadAttention" in ops) == fused and ("Softmax" in ops) != fused
    sizes = {result.shape[-1] for result in results if result.network == graphs["denoiser"]}
    assert sizes == {16 // model.vae_scale_factor, 32 // model.vae_scale_factor}
    assert max(result.rel for result in results) < 1e-4


def test_manifest_records_key_files_and_descriptors(tiny_onnx):
    _, artifacts = tiny_onnx
    manifest = json.loads(artifacts.manifest_path.read_text())
    assert manifest["key"]["model_hash"] == artifacts.key.model_hash
    assert manifest["key"]["versions"] == library_versions()
    assert manifest["key"]["opset"] >= 17
    for network in ALL_NETWORKS:
        entry = manifest["artifacts"][network]
        for name, recorded in entry["files"].items():
            assert file_sha256(artifacts.root / name) == recorded["sha256"]
        assert entry["descriptor"]["fp32_islands"] == "none (fp32 graph)"
    assert manifest["artifacts"]["denoiser"]["unused_inputs"] == ["guidance_scale"]
    assert manifest["artifacts"]["denoiser_guided"]["unused_inputs"] == []
    assert manifest["artifacts"]["vae_decoder"]["unused_inputs"] == ["y_image"]  # no fidelity branch to read it


@pytest.fixture()
def artifact_copy(tiny_onnx, tmp_path):
    """A private copy of the session's artifacts (file times kept), for tests that break them."""
    model, artifacts = tiny_onnx
    root = tmp_path / "onnx"
    shutil.copytree(artifacts.root, root)
    return model, Artifacts(root, artifacts.key)


def exported_by(model, artifacts, networks) -> list[str]:
    lines = []
    ensure_exported(model, artifacts, networks, report=lines.append)
    return [line.split()[1] for line in lines if line.startswith("exporting")]


def test_valid_artifacts_are_reused(artifact_copy):
    model, artifacts = artifact_copy
    assert exported_by(model, artifacts, ALL_NETWORKS) == []


def test_missing_or_corrupt_files_are_rebuilt(artifact_copy):
    model, artifacts = artifact_copy
    artifacts.onnx_path("text_encoder").unlink()
    with open(artifacts.onnx_path("vae_decoder"), "r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(ExportError, match="text_encoder.onnx is missing") as error:
        artifacts.require("text_encoder")
    assert "\n" not in str(error.value)
    assert "corrupt" in artifacts.problem("vae_decoder")
    # Same size, same time stamp, other bytes: only the full hash sees it.
    path = artifacts.onnx_path("vae_encoder")
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert artifacts.problem("vae_encoder") is None
    assert "sha256" in artifacts.problem("vae_encoder", full=True)
    assert sorted(exported_by(model, artifacts, ["text_encoder", "vae_decoder", "denoiser"])) == [
        "text_encoder", "vae_decoder"]
    assert artifacts.problem("text_encoder") is None and artifacts.problem("vae_decoder") is None


def test_garbage_graph_is_a_one_line_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"this is not a protobuf")
    with pytest.raises(ExportError, match="cannot load it") as error:
        create_session(path, ["CPUExecutionProvider"])
    assert "\n" not in str(error.value)
    with pytest.raises(ExportError, match="missing"):
        create_session(tmp_path / "absent.onnx", ["CPUExecutionProvider"])


def test_changed_key_makes_the_folder_stale(artifact_copy, tiny_model_copy):
    _, artifacts = artifact_copy
    versions = dict(artifacts.key.versions, onnx="0.0.1")
    other_versions = Artifacts(artifacts.root, dataclasses.replace(artifacts.key,
                                                                   versions=tuple(sorted(versions.items()))))
    assert other_versions.stale_reason() == f"onnx {onnx.__version__} != 0.0.1"
    with torch.no_grad():
        next(tiny_model_copy.text_encoder.parameters()).add_(0.01)
    other_weights = ArtifactKey.for_model(tiny_model_copy, "fp32", artifacts.key.profile)
    assert other_weights.model_hash != artifacts.key.model_hash
    assert Artifacts(artifacts.root, other_weights).stale_reason() == "model weights differ"
    # Rebuilding under the new key removes every file the stale manifest listed, then exports afresh.
    assert exported_by(tiny_model_copy, Artifacts(artifacts.root, other_weights), ["vae_encoder"]) == ["vae_encoder"]
    assert not artifacts.onnx_path("denoiser").exists()
    assert sorted(p.name for p in artifacts.root.iterdir()) == ["manifest.json", "vae_encoder.onnx"]


def test_interrupted_export_leaves_nothing_loadable(artifact_copy, monkeypatch):
    model, artifacts = artifact_copy
    artifacts.forget("vae_decoder")
    artifacts.onnx_path("vae_decoder").unlink()

    def half_written(module, args, path, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"\x08\x07partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", half_written)
    with pytest.raises(KeyboardInterrupt):
        ensure_exported(model, artifacts, ["vae_decoder"])
    assert artifacts.problem("vae_decoder") == "not exported yet"
    assert not artifacts.onnx_path("vae_decoder").exists()
    assert [p.name for p in artifacts.root.iterdir() if p.name.startswith(".")] == []  # staging removed


def test_external_data_is_gathered_into_one_file(tmp_path):
    """torch writes graphs over 2 GB as one file per tensor; they end up in one page-aligned side file."""
    weights = [np.random.default_rng(i).standard_normal((8, 8)).astype(np.float32) for i in range(3)]
    nodes, last = [], "x"
    for index in range(3):
        nodes.append(helper.make_node("MatMul", [last, f"w{index}"], [f"y{index}"]))
        last = f"y{index}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, [1, 8])],
                              [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)])
    path = tmp_path / "net.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path),
                    save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    assert len(list(tmp_path.iterdir())) == 4
    assert gather_external_data(path, "net.onnx.data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx", "net.onnx.data"]
    x = np.ones((1, 8), np.float32)
    out = create_session(path, ["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(out, x @ weights[0] @ weights[1] @ weights[2], rtol=1e-5)


def test_fp16_graph_keeps_attention_softmax_in_fp32(tiny_onnx, tmp_path):
    model, _ = tiny_onnx
    key = ArtifactKey.for_model(model, "fp16", ShapeProfile.static((32, 32)))
    artifacts = Artifacts(tmp_path / "fp16", key)
    ensure_exported(model, artifacts, ["unet", "vae_decoder"], report=quiet)
    require_passed(check_artifacts(model, artifacts, ["unet", "vae_decoder"], seed=2, report=quiet))
    graph = onnx.load(str(artifacts.onnx_path("unet"))).graph
    types = {value.name: value.type.tensor_type.elem_type for value in [*graph.value_info, *graph.input]}
    assert types["sample"] == TensorProto.FLOAT16
    softmax_inputs = [types[node.input[0]] for node in graph.node if node.op_type == "Softmax"]
    assert softmax_inputs and set(softmax_inputs) == {TensorProto.FLOAT}
    decoder = onnx.load(str(artifacts.onnx_path("vae_decoder"))).graph
    assert decoder.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # the VAE stays fp32
    entry = artifacts.entry("unet")
    assert "softmax" in entry["descriptor"]["fp32_islands"] and entry["graph_dtype"] == "float16"
    assert "whole network" in artifacts.entry("vae_decoder")["descriptor"]["fp32_islands"]


def test_fidelity_decoder_graph_reads_y_image(tmp_path):
    """With a fidelity branch the decoder graph takes the degraded image and matches PyTorch at two sizes, and the
    branch is part of the cache key."""
    from spire_rt.models import build_preset
    from spire_rt.models.fidelity import FidelityBranch

    model = build_preset("tiny")
    plain_key = ArtifactKey.for_model(model, "fp32", ShapeProfile.dynamic(16, 64, (32, 32)))
    model.fidelity = randomize_fidelity(FidelityBranch.for_vae(model.vae))
    key = ArtifactKey.for_model(model, "fp32", ShapeProfile.dynamic(16, 64, (32, 32)))
    assert key.model_hash != plain_key.model_hash
    artifacts = Artifacts(tmp_path / "fidelity", key)
    ensure_exported(model, artifacts, ["vae_decoder"], report=quiet)
    results = check_artifacts(model, artifacts, ["vae_decoder"], seed=3, report=quiet)
    require_passed(results)
    assert max(result.rel for result in results) < 1e-4
    assert artifacts.entry("vae_decoder")["unused_inputs"] == []
    graph = onnx.load(str(artifacts.onnx_path("vae_decoder"))).graph
    assert [value.name for value in graph.input] == ["latent", "y_image"]


def test_model_hash_ignores_config_bookkeeping():
    """diffusers' `_use_default_values` is a list in set order, different in every process: not part of the key."""
    from spire_rt.export.artifacts import without_bookkeeping

    first = {"a": 1, "_use_default_values": ["x", "y"], "nested": {"_b": [2, 1], "c": [{"_d": 0, "e": 3}]}}
    second = {"a": 1, "_use_default_values": ["y", "x"], "nested": {"_b": [1, 2], "c": [{"_d": 9, "e": 3}]}}
    assert without_bookkeeping(first) == without_bookkeeping(second) == {"a": 1, "nested": {"c": [{"e": 3}]}}


def test_unreadable_manifest_makes_everything_stale(artifact_copy):
    model, artifacts = artifact_copy
    artifacts.manifest_path.write_text("{ not json")
    assert artifacts.problem("vae_encoder").startswith("stale (manifest unreadable")
    assert exported_by(model, artifacts, ["vae_encoder"]) == ["vae_encoder"]
    assert artifacts.problem("vae_encoder") is None and artifacts.problem("denoiser") == "not exported yet"
