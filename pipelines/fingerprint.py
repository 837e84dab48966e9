"""What produced a piece of finished work: the key that decides whether a rerun may reuse it.

A stage's fingerprint is a hash of its name, label and parameters, plus the content of
every local file or folder a parameter names (a filter model checkpoint, a metadata
list, a blocklist): a model retrained into the same folder is another stage. A chain's
fingerprint at stage ``i`` covers the input and every stage up to ``i``, so two runs
agree on a prefix of their work exactly when their fingerprints agree there. The runner
keys its resumable work with it (docs/architecture.md, "Resume"), and ``curate ablate``
keys the segments variants share.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

LOCAL_DIR = "local-dir:"
_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime_ns) -> content digest, per process


def digest(parts: Any) -> str:
    """A short stable hash of JSON-able ``parts``."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=10).hexdigest()


def entry_fingerprint(name: str, params: dict, label: str | None = None) -> str:
    """The fingerprint of one stage entry: name, label, parameters and the content of
    the local files its parameters name."""
    return digest({"stage": name, "label": label or name, "params": params, "files": file_digests(params)})


def stage_fingerprint(stage) -> str:
    """``entry_fingerprint`` of a built stage (its validated config, defaults included,
    less its ``speed_params``)."""
    params = stage.config.model_dump(mode="json", exclude=set(getattr(stage, "speed_params", ())))
    return entry_fingerprint(stage.name, params, stage.label)


def chain(input_fingerprint: Any, stages: list) -> list[dict]:
    """Cumulative fingerprints: entry ``i`` covers the input and stages ``0..i``."""
    out, key = [], digest(input_fingerprint)
    for stage in stages:
        key = digest([key, stage_fingerprint(stage)])
        out.append({"stage": stage.label, "fingerprint": key})
    return out


def first_change(recorded: list[dict], current: list[dict]) -> str | None:
    """The label of the first stage whose cumulative fingerprint differs (a stage added
    or removed counts), or None when the chains are equal."""
    for old, new in zip(recorded, current):
        if old["fingerprint"] != new["fingerprint"]:
            return new["stage"]
    if len(recorded) != len(current):
        longer = current if len(current) > len(recorded) else recorded
        return longer[min(len(recorded), len(current))]["stage"]
    return None


def differences(old: Any, new: Any, key: str = "") -> list[str]:
    """``"key: old -> new"`` for each value two JSON documents (two recipes as manifests
    record them) hold differently, keyed as a recipe is (``stages[1].basic_filter.min_words``):
    a digest says that a run differs, this says where."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [*old, *(k for k in new if k not in old)]
        return [line for k in keys
                for line in differences(old.get(k, _UNSET), new.get(k, _UNSET), f"{key}.{k}" if key else str(k))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [line for i, (a, b) in enumerate(zip(old, new)) for line in differences(a, b, f"{key}[{i}]")]
    return [] if old == new else [f"{key}: {_shown(old)} -> {_shown(new)}"]


_UNSET = object()


def _shown(value: Any) -> str:
    if value is _UNSET:
        return "(unset)"
    if isinstance(value, list) and len(value) > 3:
        return f"{len(value)} entries"
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def file_digests(params: Any) -> dict[str, str]:
    """``{path: content digest}`` for every string in ``params`` (nested) that names an
    existing local file or folder (``local-dir:`` prefix allowed)."""
    found: dict[str, str] = {}
    for value in _strings(params):
        path = value[len(LOCAL_DIR):] if value.startswith(LOCAL_DIR) else value
        if "://" in path or "\n" in path or len(path) > 4096:
            continue
        try:
            if os.path.exists(path):
                found[value] = path_digest(Path(path))
        except OSError:
            continue
    return found


def path_digest(path: Path) -> str:
    """Content digest of a file, or of a folder's files (relative names and contents)."""
    if path.is_file():
        return _file_digest(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return digest([[str(p.relative_to(path)), _file_digest(p)] for p in files])


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        hasher = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
        _DIGESTS[key] = hasher.hexdigest()
    return _DIGESTS[key]


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
