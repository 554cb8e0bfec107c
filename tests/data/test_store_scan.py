"""The plaintext scan finds leaks (positive controls) and passes ciphertext."""

from __future__ import annotations

import os

import numpy as np

from veilfed.crypto.keys import FernetKey
from veilfed.data import synth
from veilfed.data.files import encode_clip
from veilfed.data.scan import scan


def test_scan_finds_plaintext_and_passes_ciphertext(tmp_path) -> None:
    clip = next(synth.iter_world(synth.WorldConfig(frames=4, height=32, width=32), 1))
    mp4 = encode_clip(clip)
    frames = np.ascontiguousarray(clip.video).tobytes()
    (tmp_path / "clip.mp4").write_bytes(mp4)
    (tmp_path / "frames.raw").write_bytes(frames)
    (tmp_path / "embedded.bin").write_bytes(os.urandom(100) + mp4[100:900] + os.urandom(100))
    (tmp_path / "frames.npy").write_bytes(b"\x93NUMPY" + os.urandom(64))
    key = FernetKey.generate()
    (tmp_path / "ct.bin").write_bytes(key.encrypt(mp4) + key.encrypt(frames))
    (tmp_path / "padding.db").write_bytes(b"\x00" * 4096 + b" " * 300)
    found: dict[str, set[str]] = {}
    for f in scan([tmp_path], [mp4, frames]):
        found.setdefault(f.path.name, set()).add(f.what.split(" (")[0])
    assert {"MP4 ftyp box", "known plaintext"} <= found["clip.mp4"]
    assert {"raw-frame pattern", "known plaintext"} <= found["frames.raw"]
    assert found["embedded.bin"] == {"known plaintext"}
    assert found["frames.npy"] == {"NumPy array"}
    assert "ct.bin" not in found and "padding.db" not in found
