"""The model registry: a folder of ``{name}/{version}/model.onnx`` plus ``model.yaml``."""

from __future__ import annotations

import shutil
from pathlib import Path

from stream.errors import ModelLoadError
from stream.models.manifest import MANIFEST_FILE, ONNX_FILE, ModelManifest, sha256_file
from stream.models.runtime import OnnxModel


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root
        # Each version's manifest as parsed, with the stat of the file it came from:
        # the monitor and the quality job ask for it on every window, and parsing YAML
        # holds the interpreter lock that the scoring thread needs.
        self._manifests: dict[tuple[str, str], tuple[tuple[int, int, int], ModelManifest]] = {}

    def folder(self, name: str, version: str) -> Path:
        return self.root / name / version

    def exists(self, name: str, version: str) -> bool:
        return (self.folder(name, version) / MANIFEST_FILE).is_file()

    def versions(self, name: str) -> list[str]:
        base = self.root / name
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / MANIFEST_FILE).is_file())

    def next_version(self, name: str) -> str:
        """One more than the highest numbered version of ``name`` (1 for a new model)."""
        numbers = [int(v) for v in self.versions(name) if v.isdigit()]
        return str(max(numbers, default=0) + 1)

    def manifest(self, name: str, version: str) -> ModelManifest:
        """A version's manifest, read again only when its file changed (a new register)."""
        folder = self.folder(name, version)
        if not folder.is_dir():
            raise ModelLoadError(f"model {name}:{version} is not in the registry at {self.root}")
        try:
            stat = (folder / MANIFEST_FILE).stat()
        except FileNotFoundError:
            stamp = None
        else:
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            cached = self._manifests.get((name, version))
            if cached is not None and cached[0] == stamp:
                return cached[1]
        manifest = ModelManifest.read(folder)
        if manifest.name != name or manifest.version != version:
            raise ModelLoadError(
                f"{folder}: manifest says {manifest.name}:{manifest.version}, "
                f"folder says {name}:{version}"
            )
        if stamp is not None:
            self._manifests[(name, version)] = (stamp, manifest)
        return manifest

    def load(self, name: str, version: str) -> OnnxModel:
        """Verify and warm up a model; ModelLoadError if it must not serve."""
        model = OnnxModel(self.manifest(name, version), self.folder(name, version) / ONNX_FILE)
        model.load()
        return model

    def register(self, onnx_bytes: bytes, manifest: ModelManifest) -> Path:
        """Write a model and its manifest; the manifest's checksum must match the bytes."""
        folder = self.folder(manifest.name, manifest.version)
        tmp = folder.with_name(folder.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        (tmp / ONNX_FILE).write_bytes(onnx_bytes)
        if sha256_file(tmp / ONNX_FILE) != manifest.onnx_sha256:
            shutil.rmtree(tmp)
            raise ModelLoadError(f"{manifest.name}:{manifest.version}: checksum does not match")
        manifest.write(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        return folder
