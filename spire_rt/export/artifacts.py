"""The one object that owns every ONNX artifact of a model: where each file lives, what made it, whether it is valid.

    <cache>/onnx/<model name>-<key digest>/
        manifest.json                    the key (model hash, precision, shapes, opset, library versions) and, per
                                         artifact, its files with sha256 and size, and how it was produced
        <network>.onnx                   the exported graph (+ <network>.onnx.data when its weights pass 2 GB)
        <network>.<variant>.onnx         graphs derived from it: the ONNX Runtime optimised-graph cache, int8

An artifact is loadable only while the manifest lists it with matching files, and the manifest is rewritten
atomically after the files are in place (and before they are replaced), so an interrupted export never leaves a
file a later run would load. A manifest whose key differs from the model's (other weights, precision, shapes,
library versions) is stale: its artifacts are removed and rebuilt, never trusted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..models.spire_model import SpireModel
from ..staging import staged_file
from . import ExportError
from .descriptors import ShapeProfile, check_precision

MANIFEST = "manifest.json"
FORMAT = "spire-rt-onnx"
FORMAT_VERSION = 1
CACHE_ENV = "SPIRE_RT_CACHE"
DEFAULT_OPSET = 17
# Libraries whose versions change what the exporter writes; ONNX Runtime's own version keys only its derived caches.
EXPORT_LIBRARIES = ("torch", "onnx", "diffusers", "transformers")
STAGING_PREFIX = ".staging-"


def cache_root(cache: str | os.PathLike | None = None) -> Path:
    """`cache` if given, else $SPIRE_RT_CACHE, else $XDG_CACHE_HOME/spire-rt or ~/.cache/spire-rt."""
    if cache:
        return Path(cache).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spire-rt"


def library_versions(names=EXPORT_LIBRARIES) -> dict[str, str]:
    versions = {"spire-rt": __version__}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def module_hash(module: torch.nn.Module) -> str:
    """sha256 over a module's config and every tensor of its state dict (name, dtype, shape, bytes)."""
    digest = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None:
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        digest.update(json.dumps(without_bookkeeping(config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def without_bookkeeping(value):
    """A config without its "_" keys, at every depth: they are bookkeeping, and diffusers' _use_default_values
    is a list in set order, different in every process."""
    if isinstance(value, dict):
        return {key: without_bookkeeping(item) for key, item in value.items() if not str(key).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [without_bookkeeping(item) for item in value]
    return value


def model_hash(model: SpireModel) -> str:
    """What the exported graphs depend on: every module's weights and config, and the text layer used."""
    digest = hashlib.sha256(f"text_layer={model.text_layer}|".encode())
    for name, module in sorted(model.modules().items()):
        digest.update(f"{name}={module_hash(module)}|".encode())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_json(path: Path, data: dict) -> None:
    """Write beside the target, flush to disk, then rename over it: readers see the old or the new file, whole."""
    with staged_file(path) as staging, open(staging, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2, sort_keys=True)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())


@dataclass(frozen=True)
class ArtifactKey:
    """Everything an exported graph depends on. Two exports with equal keys produce interchangeable graphs."""

    model_name: str
    model_hash: str
    precision: str
    profile: ShapeProfile
    opset: int = DEFAULT_OPSET
    versions: tuple[tuple[str, str], ...] = ()

    @classmethod
    def for_model(cls, model: SpireModel, precision: str = "fp32", profile: ShapeProfile | None = None,
                  opset: int = DEFAULT_OPSET) -> ArtifactKey:
        check_precision(precision)
        if opset < 17:
            raise ExportError(f"opset {opset} is too old: LayerNormalization needs opset 17 or newer")
        return cls(model_name=model.name, model_hash=model_hash(model), precision=precision,
                   profile=profile or ShapeProfile.default(model), opset=opset,
                   versions=tuple(sorted(library_versions().items())))

    def to_dict(self) -> dict:
        return {"model_name": self.model_name, "model_hash": self.model_hash, "precision": self.precision,
                "profile": self.profile.to_dict(), "opset": self.opset, "versions": dict(self.versions)}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def key_difference(recorded: dict, expected: dict) -> str | None:
    """A short description of the first way a manifest's key differs from the expected one, or None."""
    for field in ("model_name", "model_hash", "precision", "opset", "profile"):
        if recorded.get(field) != expected[field]:
            what = {"model_hash": "model weights differ", "profile": "shape profile differs"}.get(field, field)
            if field in ("model_name", "precision", "opset"):
                what = f"{field} {recorded.get(field)!r} != {expected[field]!r}"
            return what
    recorded_versions = recorded.get("versions") or {}
    for name, version in expected["versions"].items():
        if recorded_versions.get(name) != version:
            return f"{name} {recorded_versions.get(name)} != {version}"
    return None


class Artifacts:
    """Paths, manifest and validity of the ONNX artifacts for one ArtifactKey, in one folder.

    An artifact id is a network name (`denoiser`) or a derived variant (`denoiser.int8`, `denoiser.ort-...`).
    """

    def __init__(self, root: str | os.PathLike, key: ArtifactKey):
        self.root = Path(root)
        self.key = key

    @classmethod
    def in_cache(cls, key: ArtifactKey, cache: str | os.PathLike | None = None) -> Artifacts:
        return cls(cache_root(cache) / "onnx" / f"{key.model_name}-{key.digest()}", key)

    # paths ---------------------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def onnx_path(self, artifact: str) -> Path:
        return self.root / f"{artifact}.onnx"

    def data_name(self, artifact: str) -> str:
        """The external-data file's name, relative to the graph (ONNX stores it relative)."""
        return f"{artifact}.onnx.data"

    # manifest ------------------------------------------------------------------------------------------------
    def read_manifest(self) -> dict:
        """The manifest if it is present, readable and of this key; else an empty one (nothing is valid)."""
        fresh = {"format": FORMAT, "format_version": FORMAT_VERSION, "key": self.key.to_dict(), "artifacts": {}}
        if not self.manifest_path.exists():
            return fresh
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return fresh
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
                manifest.get("format_version") != FORMAT_VERSION or not isinstance(manifest.get("artifacts"), dict):
            return fresh
        if key_difference(manifest.get("key") or {}, self.key.to_dict()) is not None:
            return fresh
        return manifest

    def stale_reason(self) -> str | None:
        """Why the folder's manifest cannot be used with this key, or None (no manifest yet is not stale)."""
        if not self.manifest_path.exists():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            return f"manifest unreadable ({type(error).__name__})"
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            return "not a spire-rt ONNX manifest"
        if manifest.get("format_version") != FORMAT_VERSION:
            return f"manifest format {manifest.get('format_version')} != {FORMAT_VERSION}"
        return key_difference(manifest.get("key") or {}, self.key.to_dict())

    def entry(self, artifact: str) -> dict | None:
        return self.read_manifest()["artifacts"].get(artifact)

    def problem(self, artifact: str, full: bool = False) -> str | None:
        """Why `artifact` is not loadable (missing, corrupt, stale), or None when it is.

        Files are trusted when their size and modification time match the manifest; `full` re-hashes them.
        A derived artifact is valid only while its source is, unchanged.
        """
        stale = self.stale_reason()
        if stale:
            return f"stale ({stale})"
        entry = self.entry(artifact)
        if entry is None:
            return "not exported yet"
        for name, recorded in entry["files"].items():
            path = self.root / name
            try:
                stat = path.stat()
            except FileNotFoundError:
                return f"{name} is missing"
            if stat.st_size != recorded["bytes"]:
                return f"{name} is corrupt (size {stat.st_size} != {recorded['bytes']})"
            rehash = full or stat.st_mtime_ns != recorded["mtime_ns"]
            if rehash and file_sha256(path) != recorded["sha256"]:
                return f"{name} is corrupt (sha256 differs from the manifest)"
        source = entry.get("source")
        if source:
            source_entry = self.entry(source["artifact"])
            if source_entry is None or source_entry["digest"] != source["digest"]:
                return f"stale (its source {source['artifact']} was re-exported)"
            reason = self.problem(source["artifact"], full=full)
            if reason:
                return f"source {source['artifact']}: {reason}"
        return None

    def require(self, artifact: str, full: bool = False) -> Path:
        """The artifact's graph path, or a one-line ExportError saying why it cannot be loaded."""
        reason = self.problem(artifact, full=full)
        if reason:
            raise ExportError(f"{self.onnx_path(artifact)}: {reason}")
        return self.onnx_path(artifact)

    # writing -------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the folder; if it holds a stale manifest, remove what that manifest lists, then the manifest."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.stale_reason() is None:
            return
        try:
            old = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            listed = [name for entry in old.get("artifacts", {}).values() for name in entry.get("files", {})]
        except (OSError, ValueError, AttributeError):
            listed = []
        self.manifest_path.unlink()
        for name in listed:
            path = self.root / Path(name).name  # never outside the folder, whatever the manifest says
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @contextlib.contextmanager
    def staging(self, artifact: str) -> Iterator[Path]:
        """A scratch folder inside the artifact folder (same file system, so the final moves are renames)."""
        self.prepare()
        for old in self.root.glob(f"{STAGING_PREFIX}{artifact}-*"):  # left by an interrupted run
            if time.time() - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
        stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{artifact}-", dir=self.root))
        try:
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def commit(self, artifact: str, stage: Path, info: dict, source: str | None = None) -> dict:
        """Move the staged files into place and record them. Until the manifest is written, none is loadable."""
        self.forget(artifact)
        files = {}
        for staged in sorted(stage.iterdir()):
            if not staged.is_file():
                raise ExportError(f"{staged}: unexpected folder in an export's staging area")
            final = self.root / staged.name
            os.replace(staged, final)
            stat = final.stat()
            files[staged.name] = {"sha256": file_sha256(final), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        entry = {"files": files, "digest": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
        if source is not None:
            source_entry = self.entry(source)
            if source_entry is None:
                raise ExportError(f"{artifact}: its source {source} is not exported")
            entry["source"] = {"artifact": source, "digest": source_entry["digest"]}
        manifest = self.read_manifest()
        manifest["artifacts"][artifact] = entry
        atomic_write_json(self.manifest_path, manifest)
        return entry

    def forget(self, artifact: str) -> None:
        """Drop an artifact (and what derives from it) from the manifest before its files are replaced."""
        manifest = self.read_manifest()
        doomed = {artifact} | {name for name, entry in manifest["artifacts"].items()
                               if (entry.get("source") or {}).get("artifact") == artifact}
        if not doomed & set(manifest["artifacts"]):
            if not self.manifest_path.exists():
                atomic_write_json(self.manifest_path, manifest)
            return
        for name in doomed:
            manifest["artifacts"].pop(name, None)
        atomic_write_json(self.manifest_path, manifest)

    def with_key(self, **changes) -> Artifacts:
        return Artifacts(self.root, dataclasses.replace(self.key, **changes))
