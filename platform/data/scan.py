"""Plaintext scan: find files that leak video (container boxes, raw frames, known plaintext).

Tests run it over everything synth-to-store, ingest, export, import, rotation and training wrote.
It flags a file that contains

* a container signature: an MP4/MOV ``ftyp`` box, Matroska/WebM EBML, RIFF/AVI, a NumPy ``.npy``;
* a raw-frame pattern: one RGB pixel repeated 24+ times (a flat image row, which every synthetic
  frame and most real ones have; ciphertext never does). Runs of one byte that benign files pad
  with (NUL, space, 0xff, ``0``, ``-``, ``=``) are ignored;
* any window of known plaintext (e.g. the source MP4 bytes or decoded frames) passed by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_SIGNATURES: tuple[tuple[str, re.Pattern[bytes]], ...] = (
    (
        "MP4 ftyp box",
        re.compile(rb"ftyp(?:isom|iso[2-9]|mp4[12]|avc1|M4V |M4A |qt  |3gp|dash|mmp4)"),
    ),
    ("Matroska/WebM header", re.compile(rb"\x1a\x45\xdf\xa3")),
    ("RIFF/AVI header", re.compile(rb"RIFF....AVI ", re.DOTALL)),
    ("NumPy array", re.compile(rb"\x93NUMPY")),
)
_RUN = re.compile(rb"(...)\1{23,}", re.DOTALL)
_PADDING = frozenset(b"\x00 \xff0-=")
WINDOW = 64


@dataclass(frozen=True)
class Finding:
    path: Path
    offset: int
    what: str

    def __str__(self) -> str:
        return f"{self.path} @ {self.offset}: {self.what}"


def _windows(plaintexts: Iterable[bytes], stride: int) -> set[bytes]:
    out: set[bytes] = set()
    for data in plaintexts:
        for start in range(0, max(len(data) - WINDOW, 0) + 1, stride):
            window = data[start : start + WINDOW]
            if len(window) == WINDOW and len(set(window)) > 4:
                out.add(window)
    return out


def scan_bytes(data: bytes, path: Path, known: set[bytes] = frozenset()) -> list[Finding]:  # type: ignore[assignment]
    findings = [
        Finding(path, m.start(), name)
        for name, pattern in _SIGNATURES
        for m in [pattern.search(data)]
        if m
    ]
    for run in _RUN.finditer(data):
        pixel = run.group(1)
        if not (pixel[0] == pixel[1] == pixel[2] and pixel[0] in _PADDING):
            findings.append(
                Finding(
                    path,
                    run.start(),
                    f"raw-frame pattern (pixel {pixel.hex()} "
                    f"repeated {len(run.group(0)) // 3} times)",
                )
            )
            break
    if known:
        for start in range(0, max(len(data) - WINDOW, 0) + 1):
            if data[start : start + WINDOW] in known:
                findings.append(Finding(path, start, "known plaintext"))
                break
    return findings


def iter_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            yield p


def scan(
    paths: Iterable[str | Path], plaintexts: Iterable[bytes] = (), stride: int = 256
) -> list[Finding]:
    """Scan files and directories (recursively); empty list = no plaintext found."""
    known = _windows(plaintexts, stride)
    findings: list[Finding] = []
    for path in iter_files(paths):
        findings += scan_bytes(path.read_bytes(), path, known)
    return findings
