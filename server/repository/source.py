"""ModelSource: what one load of a model reads (its directory, parsed config, versions on disk), and the
keys that tell which loaded versions are still current.

A version is reloaded when its key changes: the config apart from its version policy, the files
shared by all versions, or the version's own files. A change of the version policy alone reloads
nothing; it only changes which versions serve.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .._generated import model_config_pb2 as mc
from ..spec import VersionPolicy
from .config import parse_config_json, read_config, version_policy
from .fingerprint import FileStamp, ModelFingerprint

__all__ = ["ModelSource", "VersionKey", "read_source", "with_policy"]

VersionKey = tuple[str, tuple[FileStamp, ...]]
"""(digest of the config sans version policy + shared files + directory, stamps of the version's files)."""


@dataclass(frozen=True, slots=True)
class ModelSource:
    name: str
    directory: Path
    config: mc.ModelConfig
    fingerprint: ModelFingerprint
    config_key: str

    @property
    def on_disk(self) -> list[int]:
        return sorted(self.fingerprint.versions)

    @property
    def policy(self) -> VersionPolicy:
        return version_policy(self.config)

    def version_key(self, number: int) -> VersionKey:
        return self.config_key, self.fingerprint.versions[number]


def _config_key(config: mc.ModelConfig, fingerprint: ModelFingerprint, directory: Path) -> str:
    stripped = mc.ModelConfig()
    stripped.CopyFrom(config)
    stripped.ClearField("version_policy")
    digest = hashlib.sha256(stripped.SerializeToString(deterministic=True))
    digest.update(repr((fingerprint.shared, str(directory))).encode())
    return digest.hexdigest()


def read_source(name: str, directory: Path, fingerprint: ModelFingerprint,
                config_json: str | None = None) -> ModelSource:
    """Parse the model's config (the inline override when given). Blocking; raises ModelLoadError."""
    config = parse_config_json(config_json) if config_json is not None else read_config(directory)
    return ModelSource(name, directory, config, fingerprint, _config_key(config, fingerprint, directory))


def with_policy(completed: mc.ModelConfig, source: mc.ModelConfig) -> mc.ModelConfig:
    """A copy of a loaded version's completed config carrying the version policy of `source`."""
    updated = mc.ModelConfig()
    updated.CopyFrom(completed)
    updated.ClearField("version_policy")
    if source.HasField("version_policy"):
        updated.version_policy.CopyFrom(source.version_policy)
    else:
        updated.version_policy.latest.num_versions = 1
    return updated
