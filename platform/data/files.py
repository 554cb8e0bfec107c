"""A world as plain files: one MP4 and one JSON sidecar per clip plus a manifest.

This is the research/inspection format (``veilfed data synth --out DIR``). Training data for
federated runs lives in the encrypted store instead (:mod:`veilfed.data.store`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from veilfed.data import synth, video
from veilfed.errors import UsageError
from veilfed.io import write_bytes_atomic

MANIFEST = "manifest.json"
FORMAT = "veilfed-world/1"


def encode_clip(clip: synth.Clip) -> bytes:
    """MP4 bytes of a generated clip at its world's fps and sample rate."""
    world = clip.labels["world"]
    return video.encode_mp4(clip.video, clip.audio, world["fps"], world["sample_rate"])


def write_world(
    cfg: synth.WorldConfig, n: int, out: str | Path, on_clip: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Write ``n`` clips to a new directory ``out``; built under a temp name, then renamed.

    A crash leaves no half-written world at ``out``; an existing non-empty ``out`` is refused
    rather than mixed with or overwritten.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out}: already exists and is not empty; choose a new --out or remove it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise UsageError(
            f"{out.parent}: cannot write here ({exc.strerror}); choose a writable --out"
        ) from None
    try:
        entries = []
        for clip in synth.iter_world(cfg, n):
            data = encode_clip(clip)
            (tmp / f"{clip.clip_id}.mp4").write_bytes(data)
            (tmp / f"{clip.clip_id}.json").write_text(json.dumps(clip.labels))
            entries.append(
                {
                    "clip_id": clip.clip_id,
                    "video": f"{clip.clip_id}.mp4",
                    "labels": f"{clip.clip_id}.json",
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "bytes": len(data),
                    "has_audio": clip.audio is not None,
                }
            )
            if on_clip:
                on_clip(len(entries))
        manifest = {"format": FORMAT, "world": cfg.to_dict(), "clips": entries}
        write_bytes_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


class DirectorySource:
    """ClipSource over a directory written by :func:`write_world`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        try:
            self.manifest = json.loads(path.read_text())
            self._entries = {e["clip_id"]: e for e in self.manifest["clips"]}
        except FileNotFoundError:
            raise UsageError(
                f"{path}: missing; point at a directory made by 'veilfed data synth'"
            ) from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UsageError(f"{path}: not a veilfed manifest ({exc}); regenerate it") from None

    @property
    def world(self) -> synth.WorldConfig:
        return synth.WorldConfig.from_dict(self.manifest["world"], str(self.root / MANIFEST))

    def ids(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self._entries

    def read(self, clip_id: str) -> tuple[bytes, dict[str, Any]]:
        entry = self._entries[clip_id]
        data = (self.root / entry["video"]).read_bytes()
        labels = json.loads((self.root / entry["labels"]).read_text())
        return data, labels

    def verify(self) -> list[str]:
        """Clip ids whose MP4 no longer matches the manifest's hash."""
        bad = []
        for cid, entry in self._entries.items():
            with contextlib.suppress(FileNotFoundError):
                if (
                    hashlib.sha256((self.root / entry["video"]).read_bytes()).hexdigest()
                    == entry["sha256"]
                ):
                    continue
            bad.append(cid)
        return bad
