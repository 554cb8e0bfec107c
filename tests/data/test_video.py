from __future__ import annotations

import io

import av
import numpy as np
import pytest

from veilfed.data import synth, synth_render, video
from veilfed.data.files import encode_clip
from veilfed.data.video import VideoError

# Default codec settings (H.264 crf 16, yuv420p) measured ~31 dB on the default 64x64 world.
PSNR_FLOOR_DB = 28.0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def test_mp4_round_trip_keeps_frames_and_audio():
    # Undegraded clips: pixel noise added as a degradation is (rightly) not kept by H.264.
    cfg = synth.WorldConfig(seed=3, p_degraded=0.0)
    psnrs = []
    for index in range(6):
        clip = synth.generate_clip(cfg, index)
        data = encode_clip(clip)
        info = video.probe(data)
        assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
        assert info["has_audio"] and info["sample_rate"] == cfg.sample_rate
        dec = video.decode(
            data, cfg.frames, (cfg.height, cfg.width), cfg.sample_rate, cfg.audio_samples
        )
        assert dec.video.shape == clip.video.shape and dec.source_frames == cfg.frames
        psnrs.append(_psnr(dec.video, clip.video))
        assert np.corrcoef(dec.audio, clip.audio)[0, 1] > 0.95
    assert min(psnrs) > PSNR_FLOOR_DB, psnrs


def test_labels_stay_valid_after_round_trip():
    """Masks rendered from the sidecar still cover the object's pixels in the decoded video."""
    cfg = synth.WorldConfig(seed=5, p_degraded=0.0)
    clip = synth.generate_clip(cfg, 0)
    dec = video.decode(encode_clip(clip), cfg.frames, (cfg.height, cfg.width))
    masks = synth_render.instance_masks(clip.labels, cfg.height, cfg.width)
    colour = np.array(synth.schema.COLOR_RGB[clip.labels["color"]], dtype=float)
    inside = dec.video[masks == 1].astype(float)
    assert np.abs(inside - colour).mean() < 25


def test_decode_resamples_geometry_and_accepts_file_objects(tiny_clips):
    data = encode_clip(tiny_clips[0])
    dec = video.decode(io.BytesIO(data), 4, (16, 24), sample_rate=8000)
    assert dec.video.shape == (4, 16, 24, 3)
    assert abs(dec.audio.size - 8000) < 1100  # 1 s clip at 8 kHz (AAC frame padding)


def test_missing_audio_gives_zeros(tmp_path):
    cfg = synth.WorldConfig(frames=8, height=32, width=32, p_missing_audio=1.0)
    clip = synth.generate_clip(cfg, 0)
    path = tmp_path / "silent.mp4"
    path.write_bytes(encode_clip(clip))
    dec = video.decode(path, 8, (32, 32), audio_samples=cfg.audio_samples)
    assert not dec.has_audio
    assert dec.audio.shape == (cfg.audio_samples,) and not dec.audio.any()


def _webm(frames: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as out:
        s = out.add_stream("libvpx", rate=8)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for img in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(s.encode(None))
    return buf.getvalue()


def test_webm_without_audio_decodes(tiny_clips):
    dec = video.decode(_webm(tiny_clips[1].video), 8, (32, 32))
    assert dec.video.shape == (8, 32, 32, 3) and not dec.has_audio


def test_corrupt_file_is_one_line_error(tmp_path, tiny_clips):
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(VideoError) as err:
        video.decode(path, 8, (32, 32))
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg


def test_truncated_file_errors(tmp_path, tiny_clips):
    data = encode_clip(tiny_clips[0])
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoError, match="truncated.mp4"):
        video.decode(path, 8, (32, 32))


def test_zero_length_and_missing_files(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty file"):
        video.decode(empty, 8, (32, 32))
    with pytest.raises(VideoError, match="no such file"):
        video.decode(tmp_path / "nope.mp4", 8, (32, 32))
    with pytest.raises(VideoError, match="empty video"):
        video.decode(b"", 8, (32, 32))


def test_clip_shorter_than_frames(tiny_clips):
    with pytest.raises(VideoError, match="fewer than the 32 required"):
        video.decode(encode_clip(tiny_clips[0]), 32, (32, 32))


def test_odd_sample_rate_rejected(tiny_clips):
    with pytest.raises(VideoError, match="sample rate 100 Hz"):
        video.decode(encode_clip(tiny_clips[0]), 8, (32, 32), sample_rate=100)


def test_unsupported_stream_is_clear(tmp_path):
    """A file with audio only (no video stream) is refused by name."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 16000
        out.mux(s.encode(frame))
        out.mux(s.encode(None))
    path = tmp_path / "audio_only.m4a"
    path.write_bytes(buf.getvalue())
    with pytest.raises(VideoError, match="no video stream"):
        video.decode(path, 8, (32, 32))
