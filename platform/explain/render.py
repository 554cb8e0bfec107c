"""An explanation as files: heat-map frames, an MP4, bar charts and one self-contained HTML page.

Layout under ``OUT/<video stem>-<task>/`` (``-2``, ... when that folder exists):

* ``frames.png``: every frame of the window with the video map over it (smoothed; one colour
  scale for the whole window, so frames compare), scaled up to at least :data:`MIN_SIDE` pixels;
* ``overlay.mp4``: the same frames as a video at the window's rate;
* ``modalities.png``: the confidence drop when each modality is dropped (``ablation``);
* ``audio.png``: the audio map over time (x) and mel band or slice (y), when there is audio;
* ``report.html``: all of the above embedded (base64), the transcript with each token shaded
  by its share, and the JSON of the explanation: one file to send or archive;
* ``explanation.json``.

Every file is written atomically and never replaces one this command did not create.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from veilfed.data.video import encode_mp4
from veilfed.explain.attribute import Attribution
from veilfed.inference.media import even_sides
from veilfed.io import write_bytes_atomic

MIN_SIDE = 192
_CMAP = colormaps["inferno"]


def overlays(video: torch.Tensor, heat: torch.Tensor | None, alpha: float = 0.55) -> np.ndarray:
    """uint8 [T, H', W', 3]: frames ``video`` [T, 3, H, W] in [0, 1] with ``heat`` [T, H, W]
    coloured over them, scaled up by a whole factor to at least :data:`MIN_SIDE`."""
    frames = (video.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).astype(np.float32)
    if heat is not None:
        norm = _readable(heat).numpy()
        colour = _CMAP(norm)[..., :3] * 255
        frames = (1 - alpha * norm[..., None]) * frames + alpha * norm[..., None] * colour
    scale = max(1, -(-MIN_SIDE // min(frames.shape[1:3])))
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    return frames.clip(0, 255).round().astype(np.uint8)


def _readable(heat: torch.Tensor) -> torch.Tensor:
    """[T, H, W] in [0, 1] for the eye: pixel attributions are speckled, so each is averaged
    over a neighbourhood of a sixteenth of the frame, then scaled so the 99th percentile of the
    whole window is 1 (one hot pixel does not wash the rest out)."""
    k = max(1, min(heat.shape[1:]) // 16) | 1  # odd: the average stays centred
    smooth = torch.nn.functional.avg_pool2d(heat[:, None], k, stride=1, padding=k // 2)[:, 0]
    top = torch.quantile(smooth.flatten().float(), 0.99).clamp(min=1e-12)
    return (smooth / top).clamp(0, 1)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def frames_png(frames: np.ndarray, per_row: int = 8) -> bytes:
    t, h, w, _ = frames.shape
    rows = -(-t // per_row)
    sheet = np.full((rows * (h + 4), min(t, per_row) * (w + 4), 3), 255, dtype=np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, per_row)
        sheet[r * (h + 4) : r * (h + 4) + h, c * (w + 4) : c * (w + 4) + w] = frame
    return _png(Image.fromarray(sheet))


def _figure(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")  # Agg: no display needed
    return buf.getvalue()


def bars_png(ablation: dict[str, Any], label: str) -> bytes:
    fig = Figure(figsize=(4, 2.6))
    ax = fig.subplots()
    names = list(ablation["drop"])
    drops = [ablation["drop"][m] for m in names]
    ax.bar(
        names, drops, color=["#d95f02" if m == ablation["decided"] else "#7570b3" for m in names]
    )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("confidence drop")
    ax.set_title(f"{label}: {ablation['full']:.3f} with every modality", fontsize=9)
    return _figure(fig)


def audio_png(audio: torch.Tensor) -> bytes:
    fig = Figure(figsize=(5, 2.4))
    ax = fig.subplots()
    ax.imshow(audio.T.numpy(), origin="lower", aspect="auto", cmap="inferno")
    ax.set_xlabel("time (spectrogram frames)" if audio.shape[1] > 1 else "time (slices)")
    ax.set_ylabel("mel band" if audio.shape[1] > 1 else "")
    return _figure(fig)


def _img(data: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def page(attr: Attribution, ablation: dict[str, Any], images: dict[str, bytes], video: bytes):
    """The self-contained HTML report (module docstring)."""
    t = attr.target
    parts = [
        "<!doctype html><meta charset='utf-8'><title>veilfed explain</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "img,video{max-width:100%}span.tok{padding:2px 3px;margin:1px;border-radius:3px}</style>",
        f"<h1>{html.escape(t.task)}: {html.escape(t.label)}</h1>",
        f"<p>method <b>{attr.method}</b>; confidence {attr.confidence:.3f}; decided by: "
        f"<b>{html.escape(str(ablation.get('decided')))}</b></p>",
    ]
    if "frames" in images:
        parts += ["<h2>Video</h2>", _img(images["frames"])]
    if video:
        data = base64.b64encode(video).decode()
        parts.append(f'<video controls loop src="data:video/mp4;base64,{data}"></video>')
    if "audio" in images:
        parts += ["<h2>Audio</h2>", _img(images["audio"])]
    if attr.text is not None:
        share = (attr.text / attr.text.max().clamp(min=1e-12)).tolist()
        toks = [
            f'<span class="tok" style="background:rgba(217,95,2,{s:.2f})">{html.escape(w)}</span>'
            for w, s in zip(attr.tokens, share, strict=False)
            if w
        ]
        parts += ["<h2>Transcript</h2>", "<p>" + " ".join(toks) + "</p>"]
    parts += ["<h2>Modalities</h2>", _img(images["modalities"])]
    body = json.dumps(attr.to_json() | {"ablation": ablation}, indent=1)
    parts += ["<h2>JSON</h2>", f"<pre>{html.escape(body)}</pre>"]
    return "\n".join(parts) + "\n"


def write(
    folder: Path, attr: Attribution, ablation: dict[str, Any], video: torch.Tensor, fps: int
) -> list[str]:
    """Write the files of one explanation into the new ``folder`` (module docstring)."""
    folder.mkdir(parents=True, exist_ok=False)
    images = {"modalities": bars_png(ablation, f"{attr.target.task}={attr.target.label}")}
    frames = overlays(video, attr.video)
    if attr.video is not None:
        images["frames"] = frames_png(frames)
    movie = encode_mp4(even_sides(frames), None, fps) if attr.video is not None else b""
    if attr.audio is not None:
        images["audio"] = audio_png(attr.audio)
    files = {f"{name}.png": data for name, data in images.items()}
    if movie:
        files["overlay.mp4"] = movie
    files["report.html"] = page(attr, ablation, images, movie).encode()
    files["explanation.json"] = (
        json.dumps(attr.to_json() | {"ablation": ablation}) + "\n"
    ).encode()
    written = []
    for name, data in files.items():
        write_bytes_atomic(folder / name, data, overwrite=False)
        written.append(str(folder / name))
    return written
