"""Several data sources as one manifest (``stage1 features --data A --data night=B``).

Each source is read by ``stage1.manifest.load_manifest`` on its own, so its splits are exactly
the ones it gets alone (the hash splits are per sample or group key, hence stratified per
source as before); the sources are then concatenated in the order given.

* ``NAME=PATH`` tags every sample of ``PATH`` with domain ``NAME``; a bare ``PATH`` keeps the
  domains its manifest gives (else ``default``).
* With one source the samples are returned unchanged (ids, groups: byte-identical caches to a
  plain ``--data PATH``). With several, ids and non-empty groups are prefixed ``TAG/`` (``TAG`` =
  the source's NAME, else its folder/file name) so they stay unique across sources and a group id
  of one source never joins a group of another.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from stage1.config import DataConfig
from stage1.manifest import ManifestError, Sample, load_manifest

_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclasses.dataclass(frozen=True)
class Source:
    path: str
    name: str = ""  # domain to tag every sample with ("" = keep the manifest's)

    @property
    def tag(self) -> str:
        return self.name or Path(self.path.rstrip("/\\")).stem or self.path

    def __str__(self) -> str:
        return f"{self.name}={self.path}" if self.name else self.path


def parse_source(spec: str) -> Source:
    """``PATH`` or ``NAME=PATH`` (a path that exists as written is a path, even with ``=``)."""
    spec = spec.strip()
    if not spec:
        raise ManifestError("empty --data value")
    name, sep, path = spec.partition("=")
    if sep and not os.path.exists(spec) and _NAME.fullmatch(name):
        if not path:
            raise ManifestError(f"--data {spec!r}: no path after {name}=")
        return Source(path=path, name=name)
    return Source(path=spec)


def parse_sources(specs: list[str] | tuple[str, ...]) -> list[Source]:
    """Parsed sources; duplicate names, duplicate paths or ambiguous tags are one-line errors."""
    sources = [parse_source(s) for s in specs]
    if not sources:
        raise ManifestError("no data source given")
    seen: dict[str, Source] = {}
    paths: dict[str, Source] = {}
    for s in sources:
        key = os.path.normpath(os.path.abspath(s.path))
        if key in paths:
            raise ManifestError(f"data source {s.path} is given twice ({paths[key]} and {s})")
        paths[key] = s
        if s.tag in seen:
            what = "name" if s.name else "folder/file name"
            raise ManifestError(
                f"two data sources share the {what} {s.tag!r} ({seen[s.tag]} and {s}); "
                "tag them with distinct NAME=PATH"
            )
        seen[s.tag] = s
    return sources


def load_sources(specs: list[str] | tuple[str, ...], cfg: DataConfig) -> list[Sample]:
    """The combined samples of ``specs`` (see the module docstring)."""
    sources = parse_sources(specs)
    out: list[Sample] = []
    for src in sources:
        try:
            samples = load_manifest(src.path, cfg)
        except ManifestError as e:
            raise ManifestError(f"--data {src}: {e}") from None
        if src.name:
            samples = [dataclasses.replace(s, domain=src.name) for s in samples]
        if len(sources) > 1:
            samples = [
                dataclasses.replace(
                    s, id=f"{src.tag}/{s.id}", group=f"{src.tag}/{s.group}" if s.group else ""
                )
                for s in samples
            ]
        out += samples
    return out
