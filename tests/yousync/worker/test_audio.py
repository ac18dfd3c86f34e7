"""The worker's preparation stage on real files with the real ffmpeg: both decoders (pydub in
memory, the streamed ffmpeg subprocess), the conversions, the refusals, and the memory bound."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import hostile_media
from yousync.core.errors import PermanentError
from yousync.worker import audio

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="ffmpeg/ffprobe not installed (the worker needs them)",
)

REPO = Path(__file__).resolve().parents[3]
IN_MEMORY = 10**12  # a threshold no test file reaches: always pydub
STREAMED = 0  # every file is above it: always ffmpeg
PATHS = pytest.mark.parametrize(
    ("threshold", "method"), [(IN_MEMORY, "pydub"), (STREAMED, "ffmpeg")], ids=["pydub", "ffmpeg"]
)


def sine(seconds: float, rate: int, *, hz: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    mono = 0.5 * np.sin(2 * np.pi * hz * t)
    return np.repeat(mono[:, None], channels, axis=1)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    frames = samples.reshape(samples.shape[0], -1 if samples.size else 1)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((frames * 32767).astype("<i2").tobytes())
    return path


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=60)


def decoded(path: Path) -> tuple[np.ndarray, int, int]:
    """(samples of the first channel, rate, channels) of a stored file, via ffprobe/ffmpeg."""
    entries = "stream=sample_rate,channels"
    probe = ["ffprobe", "-v", "error", "-show_entries", entries, "-of", "json", str(path)]
    info = json.loads(subprocess.run(probe, capture_output=True, check=True).stdout)["streams"][0]
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-c:a", "pcm_s16le", "-"],
        capture_output=True,
        check=True,
    ).stdout
    channels = int(info["channels"])
    samples = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)[:, 0] / 32768
    return samples, int(info["sample_rate"]), channels


def run(
    source: Path,
    *,
    threshold: int,
    store_format: str = "flac",
    source_format: str = "wav",
    sample_rate: int | None = 48_000,
    channels: int | None = 1,
) -> audio.PreparedAudio:
    return audio.prepare(
        source,
        source_format=source_format,
        store_format=store_format,
        dest=source.with_name(f"{source.name}.prepared"),
        bounds=audio.Bounds(sample_rate=sample_rate, channels=channels),
        stream_threshold_bytes=threshold,
    )


# --- both paths: same result ---------------------------------------------------------------


@PATHS
def test_prepare_when_stereo_44k_wav_to_flac_then_mono_same_rate_exact_duration(
    tmp_path: Path, threshold: int, method: str
) -> None:
    source = write_wav(tmp_path / "take", sine(2.5, 44_100, channels=2), 44_100)

    prepared = run(source, threshold=threshold)

    assert prepared.method == method
    assert prepared.path == tmp_path / "take.prepared.flac"
    assert (prepared.extension, prepared.content_type) == ("flac", "audio/flac")
    assert abs(prepared.duration_ms - 2500) <= 10
    assert (prepared.sample_rate, prepared.channels) == (44_100, 1)
    assert prepared.size == prepared.path.stat().st_size
    samples, rate, channels = decoded(prepared.path)
    assert (rate, channels) == (44_100, 1)
    assert abs(len(samples) - 2.5 * 44_100) <= 1
    assert np.max(np.abs(samples)) == pytest.approx(0.5, abs=0.01)  # averaged, not summed


@PATHS
def test_prepare_when_rate_ceiling_below_source_then_resampled_down_without_aliasing(
    tmp_path: Path, threshold: int, method: str
) -> None:
    # 440 Hz plus 9 kHz, above the 16 kHz output's Nyquist frequency (8 kHz): a resampler
    # without a low-pass (pydub's audioop.ratecv) would fold it down to 16 - 9 = 7 kHz.
    t = np.arange(2 * 44_100) / 44_100
    mix = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.4 * np.sin(2 * np.pi * 9000 * t)
    source = write_wav(tmp_path / "take", mix, 44_100)

    prepared = run(source, threshold=threshold, sample_rate=16_000)

    assert prepared.method == method
    assert prepared.sample_rate == 16_000
    samples, rate, _ = decoded(prepared.path)
    spectrum = np.abs(np.fft.rfft(samples))
    freqs = np.fft.rfftfreq(samples.size, 1 / rate)
    at = lambda hz: spectrum[np.argmin(np.abs(freqs - hz))]  # noqa: E731
    assert at(7000) < at(440) * 1e-2, "the 9 kHz tone must not come back as 7 kHz"


@PATHS
def test_prepare_when_source_rate_below_ceiling_and_mono_then_not_upsampled(
    tmp_path: Path, threshold: int, method: str
) -> None:
    source = write_wav(tmp_path / "take", sine(1.0, 16_000), 16_000)

    prepared = run(source, threshold=threshold, sample_rate=48_000, channels=2)

    assert (prepared.sample_rate, prepared.channels) == (16_000, 1)


@PATHS
@pytest.mark.parametrize(
    ("store_format", "content_type", "stored_rate"),
    [("mp3", "audio/mpeg", 22_050), ("ogg", "audio/ogg", 48_000)],
)
def test_prepare_when_lossy_store_format_then_smaller_and_decodable(
    tmp_path: Path,
    threshold: int,
    method: str,
    store_format: str,
    content_type: str,
    stored_rate: int,
) -> None:
    source = write_wav(tmp_path / "take", sine(3.0, 22_050, channels=2), 22_050)

    prepared = run(source, threshold=threshold, store_format=store_format)

    assert prepared.method == method
    assert (prepared.extension, prepared.content_type) == (store_format, content_type)
    assert prepared.size < source.stat().st_size / 5
    # Opus always decodes at 48 kHz: the stored rate is what a decoder will get.
    assert (prepared.sample_rate, prepared.channels) == (stored_rate, 1)
    samples, _, _ = decoded(prepared.path)
    assert samples.size > 0


@PATHS
def test_prepare_when_store_original_then_byte_identical_copy_still_validated(
    tmp_path: Path, threshold: int, method: str
) -> None:
    wav = write_wav(tmp_path / "src.wav", sine(2.0, 22_050), 22_050)
    source = tmp_path / "take"
    ffmpeg("-i", str(wav), "-c:a", "libmp3lame", "-f", "mp3", str(source))

    prepared = run(source, threshold=threshold, store_format="original", source_format="mp3")

    assert prepared.method == method
    assert (prepared.extension, prepared.content_type) == ("mp3", "audio/mpeg")
    assert prepared.path.read_bytes() == source.read_bytes()
    assert abs(prepared.duration_ms - 2000) <= 60  # mp3 frames: encoder padding


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"This is a text file, not audio.\n" * 40, "unsupported_audio_format"),
        (b"OggS" + b"\x00" * 60 + b"this is not an ogg stream" * 200, "undecodable_audio"),
        (np.random.default_rng(3).bytes(20_000), "unsupported_audio_format"),
    ],
    ids=["text", "fake-ogg-header", "random"],
)
def test_prepare_when_not_audio_then_refused_without_host_paths(
    tmp_path: Path, content: bytes, code: str
) -> None:
    source = tmp_path / "take"
    source.write_bytes(content)

    with pytest.raises(PermanentError) as caught:
        run(source, threshold=IN_MEMORY, source_format="ogg")

    assert caught.value.code == code
    assert str(tmp_path) not in caught.value.message
    assert not list(tmp_path.glob("take.prepared*")), "no half-written output left behind"


@PATHS
def test_prepare_when_wav_declares_a_codec_off_the_allow_list_then_unsupported(
    tmp_path: Path, threshold: int, method: str
) -> None:
    # ffprobe reads the header happily; the codec it names is not one a WAV may carry here,
    # so nothing is decoded at all.
    fmt = struct.pack("<HHIIHH", 0x7777, 1, 16_000, 32_000, 2, 16)
    data = b"\x01\x02" * 16_000
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    source = tmp_path / "take"
    source.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)

    with pytest.raises(PermanentError) as caught:
        run(source, threshold=threshold)

    assert caught.value.code == "unsupported_audio_format"


@PATHS
def test_prepare_when_flac_cut_short_then_truncated_audio(
    tmp_path: Path, threshold: int, method: str
) -> None:
    wav = write_wav(tmp_path / "src.wav", sine(4.0, 22_050), 22_050)
    whole = tmp_path / "whole.flac"
    ffmpeg("-i", str(wav), str(whole))
    source = tmp_path / "take"
    source.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    with pytest.raises(PermanentError) as caught:
        run(source, threshold=threshold, source_format="flac")

    assert caught.value.code == "truncated_audio"
    assert "declares 4.0 s" in caught.value.message
    assert not list(tmp_path.glob("take.prepared*"))


def test_prepare_when_wav_written_by_a_streaming_recorder_then_not_mistaken_for_truncated(
    tmp_path: Path,
) -> None:
    # Recorders that cannot seek back leave 0xFFFFFFFF as the data size; that is not a lie.
    good = write_wav(tmp_path / "src.wav", sine(1.5, 16_000), 16_000).read_bytes()
    data_at = good.index(b"data")
    source = tmp_path / "take"
    source.write_bytes(good[: data_at + 4] + b"\xff\xff\xff\xff" + good[data_at + 8 :])

    prepared = run(source, threshold=IN_MEMORY)

    assert abs(prepared.duration_ms - 1500) <= 10


def test_prepare_when_wav_has_no_frames_then_empty_audio(tmp_path: Path) -> None:
    source = write_wav(tmp_path / "take", np.zeros(0), 16_000)

    with pytest.raises(PermanentError) as caught:
        run(source, threshold=IN_MEMORY)

    assert caught.value.code == "empty_audio"


# --- choosing the path ---------------------------------------------------------------------


def test_prepare_when_decoded_size_crosses_the_threshold_then_switches_to_ffmpeg(
    tmp_path: Path,
) -> None:
    # 2 s of 16 kHz mono: at most 2 s + tolerance + 1 s overshoot of 16-bit PCM, plus a frame.
    source = write_wav(tmp_path / "take", sine(2.0, 16_000), 16_000)
    bound = audio.decoded_bound_bytes(audio.probe(source), audio.Bounds().decode_limits())
    assert bound == (round(3.5 * 16_000) + 4096) * 2

    assert run(source, threshold=bound).method == "pydub"
    assert run(source, threshold=bound - 1).method == "ffmpeg"


@pytest.mark.parametrize(
    ("max_seconds", "method"), [(600, "pydub"), (1200, "ffmpeg")], ids=["10-min", "20-min"]
)
def test_prepare_when_webm_has_no_duration_then_sized_by_the_limit(
    tmp_path: Path, max_seconds: float, method: str
) -> None:
    # A browser's MediaRecorder writes WebM as it records and never goes back to fill in the
    # duration; ffmpeg writing to a pipe does the same. Unknown length: the decode may run to
    # the limit, so the limit decides whether that fits in memory (601 s of 48 kHz mono is
    # 57.7 MB, under the 64 MB default; 1201 s is not).
    wav = write_wav(tmp_path / "src.wav", sine(2.0, 48_000), 48_000)
    webm = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "libopus", "-f", "webm", "pipe:1"],
        capture_output=True,
        check=True,
    ).stdout
    source = tmp_path / "take"
    source.write_bytes(webm)
    assert audio.probe(source).duration_seconds is None

    prepared = audio.prepare(
        source,
        source_format="webm",
        store_format="flac",
        dest=tmp_path / "out",
        bounds=audio.Bounds(max_seconds=max_seconds),
    )

    assert prepared.method == method
    assert abs(prepared.duration_ms - 2000) <= 30


def test_probe_when_mp3_then_decoded_size_bounded_by_the_limit_not_its_estimate(
    tmp_path: Path,
) -> None:
    wav = write_wav(tmp_path / "src.wav", sine(10.0, 44_100, channels=2), 44_100)
    source = tmp_path / "take"
    ffmpeg("-i", str(wav), "-c:a", "libmp3lame", "-f", "mp3", str(source))

    info = audio.probe(source)
    limits = audio.Bounds(max_seconds=600, channels=1).decode_limits()

    assert (info.sample_rate, info.channels) == (44_100, 2)
    assert info.exact_duration is None, "an mp3's duration is an estimate"
    # Nothing vouches for the estimate: the decode may run to the limit + 1 s, in mono.
    assert audio.decoded_bound_bytes(info, limits) == (601 * 44_100 + 4096) * 2


# --- the memory bound ----------------------------------------------------------------------

MEASURE = """
from pathlib import Path
from yousync.worker import audio

def high_water_mark():
    # VmHWM, not getrusage's ru_maxrss: the latter keeps the RSS this process had before
    # exec, i.e. the test runner's, which would hide everything measured here.
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

before = high_water_mark()
prepared = audio.prepare(Path({source!r}), source_format="wav", store_format="flac",
    dest=Path({dest!r}), stream_threshold_bytes={threshold})
print(prepared.method, high_water_mark() - before)
"""


def peak_growth(source: Path, *, threshold: int) -> tuple[str, int]:
    """(method, growth of the worker's peak RSS in bytes), in a fresh interpreter so earlier
    tests' allocations cannot hide it."""
    script = MEASURE.format(
        source=str(source),
        dest=str(source.with_name(f"{source.name}.{threshold}")),
        threshold=threshold,
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, check=True, timeout=100
    ).stdout.split()
    return output[0].decode(), int(output[1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_prepare_when_large_input_then_ffmpeg_path_memory_stays_flat_unlike_pydub(
    tmp_path: Path,
) -> None:
    decoded_bytes = 3 * 60 * 44_100 * 2 * 2  # 3 min of 44.1 kHz stereo: 31.8 MB of PCM
    pcm = (np.sin(np.arange(decoded_bytes // 4) * 0.0627) * 16_000).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(44_100)
        out.writeframes(np.repeat(pcm[:, None], 2, axis=1).tobytes())
    source = tmp_path / "long"
    source.write_bytes(buffer.getvalue())
    del pcm, buffer

    streamed_method, streamed = peak_growth(source, threshold=STREAMED)
    in_memory_method, in_memory = peak_growth(source, threshold=IN_MEMORY)

    assert (streamed_method, in_memory_method) == ("ffmpeg", "pydub")
    assert streamed < 10 * 1024 * 1024, f"ffmpeg path grew the worker by {streamed} bytes"
    # The in-memory path holds the clip as converted by ffmpeg: mono, 44.1 kHz, 16-bit.
    assert in_memory > 3 * 60 * 44_100 * 2, "pydub holds at least the whole decoded clip"


def test_prepare_when_api_guessed_mp3_behind_a_large_tag_and_it_is_adts_then_prepared(
    tmp_path: Path,
) -> None:
    # The API sees 4 KB: behind a larger ID3 tag it can only say "mp3"; ADTS AAC is as good.
    adts = tmp_path / "take.aac"
    ffmpeg("-f", "lavfi", "-i", "sine=f=440:d=2", "-c:a", "aac", "-f", "adts", str(adts))
    source = tmp_path / "take"
    source.write_bytes(hostile_media.id3_padding(8192) + adts.read_bytes())

    prepared = run(source, threshold=IN_MEMORY, source_format="mp3")

    assert abs(prepared.duration_ms - 2000) <= 60
