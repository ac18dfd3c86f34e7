"""The signal features, each on a synthetic signal whose right answer is known."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from analysis_server import features
from tests.analysis_server.signals import needs_ffmpeg, to_wav, tone_bursts

RATE = 44_100


def sine(hz: float, seconds: float, *, amplitude: float = 0.5, rate: int = RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def silence(seconds: float, *, rate: int = RATE) -> np.ndarray:
    return np.zeros(round(seconds * rate), dtype=np.float32)


# --- pcm_to_float / to_mono / duration_ms ---------------------------------------------------


def test_pcm_to_float_when_int16_stereo_then_frames_by_channels_scaled_to_full_scale() -> None:
    raw = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()

    samples = features.pcm_to_float(raw, sample_width=2, channels=2)

    assert samples.dtype == np.float32
    assert samples.shape == (2, 2)
    np.testing.assert_allclose(samples, [[0.0, 0.5], [-1.0, 32767 / 32768]])


def test_pcm_to_float_when_24_bit_then_sign_and_scale_are_right() -> None:
    values = [0, 2**22, -(2**23), 2**23 - 1]
    raw = b"".join(v.to_bytes(3, "little", signed=True) for v in values)

    samples = features.pcm_to_float(raw, sample_width=3, channels=1)

    np.testing.assert_allclose(samples[:, 0], [0.0, 0.5, -1.0, (2**23 - 1) / 2**23])


def test_pcm_to_float_when_8_bit_signed_then_scaled_by_128() -> None:
    raw = np.array([0, 64, -128], dtype="i1").tobytes()

    samples = features.pcm_to_float(raw, sample_width=1, channels=1)

    np.testing.assert_allclose(samples[:, 0], [0.0, 0.5, -1.0])


def test_pcm_to_float_when_trailing_partial_frame_then_it_is_dropped() -> None:
    raw = np.array([1, 2, 3], dtype="<i2").tobytes()

    assert features.pcm_to_float(raw, sample_width=2, channels=2).shape == (1, 2)


def test_to_mono_when_stereo_then_channels_are_averaged() -> None:
    stereo = np.array([[1.0, 0.0], [0.5, -0.5]], dtype=np.float32)

    np.testing.assert_allclose(features.to_mono(stereo), [0.5, 0.0])


@pytest.mark.parametrize("seconds", [0.25, 1.0, 2.5, 61.337])
def test_duration_ms_when_frames_at_rate_then_within_10_ms(seconds: float) -> None:
    frames = sine(440, seconds).size

    assert abs(features.duration_ms(frames, RATE) - seconds * 1000) <= 10


# --- levels --------------------------------------------------------------------------------


def test_rms_dbfs_when_full_scale_sine_then_minus_3_dbfs() -> None:
    assert features.rms_dbfs(sine(440, 1.0, amplitude=1.0)) == pytest.approx(-3.01, abs=0.01)


def test_rms_dbfs_when_half_scale_sine_then_6_db_lower() -> None:
    assert features.rms_dbfs(sine(440, 1.0, amplitude=0.5)) == pytest.approx(-9.03, abs=0.01)


def test_rms_dbfs_when_pure_silence_then_none() -> None:
    assert features.rms_dbfs(silence(1.0)) is None
    assert features.rms_dbfs(np.zeros(0, dtype=np.float32)) is None


def test_rms_dbfs_when_very_quiet_then_very_low() -> None:
    level = features.rms_dbfs(sine(440, 1.0, amplitude=1e-4))

    assert level is not None
    assert level < -80


def test_peak_dbfs_when_half_scale_then_minus_6_dbfs() -> None:
    assert features.peak_dbfs(sine(440, 1.0, amplitude=0.5)) == pytest.approx(-6.02, abs=0.01)


def test_peak_dbfs_when_silence_then_none() -> None:
    assert features.peak_dbfs(silence(0.5)) is None


def test_clipping_ratio_when_clean_sine_then_zero() -> None:
    assert features.clipping_ratio(sine(440, 1.0, amplitude=0.9)) == 0.0


def test_clipping_ratio_when_overdriven_sine_is_clipped_then_share_of_flat_tops() -> None:
    clipped = np.clip(sine(440, 1.0, amplitude=2.0), -1.0, 1.0)

    ratio = features.clipping_ratio(clipped)

    # |2 sin x| >= 0.999 for about a third of each period (arcsin(0.4995) = 30°).
    assert ratio == pytest.approx(2 / 3, abs=0.01)


def test_clipping_ratio_when_one_channel_clips_then_it_is_counted() -> None:
    clean = sine(440, 1.0, amplitude=0.3)
    clipped = np.clip(sine(440, 1.0, amplitude=2.0), -1.0, 1.0)
    stereo = np.stack([clean, clipped], axis=1)

    assert features.clipping_ratio(stereo) == pytest.approx(1 / 3, abs=0.01)
    # Mixed down, the clipped channel disappears below the threshold: why we pass all channels.
    assert features.clipping_ratio(features.to_mono(stereo)) == 0.0


# --- silence and segments -----------------------------------------------------------------


def tone_gap_tone() -> np.ndarray:
    return np.concatenate([sine(440, 1.0), silence(1.0), sine(440, 1.0)])


def test_silence_ratio_when_one_second_gap_in_three_then_one_third() -> None:
    assert features.silence_ratio(tone_gap_tone(), RATE) == pytest.approx(1 / 3, abs=0.01)


def test_silence_ratio_when_continuous_tone_then_zero() -> None:
    assert features.silence_ratio(sine(220, 2.0), RATE) == 0.0


def test_silence_ratio_when_pure_silence_then_one() -> None:
    assert features.silence_ratio(silence(2.0), RATE) == 1.0


def test_silence_ratio_when_quiet_noise_below_threshold_then_counted_as_silence() -> None:
    rng = np.random.default_rng(0)
    hiss = rng.normal(0, 10 ** (-70 / 20), RATE).astype(np.float32)  # -70 dBFS

    assert features.silence_ratio(np.concatenate([sine(440, 1.0), hiss]), RATE) == pytest.approx(
        0.5, abs=0.01
    )


def test_voiced_segments_when_tone_gap_tone_then_two_segments_at_the_tones() -> None:
    segments = features.voiced_segments(tone_gap_tone(), RATE)

    assert len(segments) == 2
    expected = [(0, 1000), (2000, 3000)]
    for segment, (start, end) in zip(segments, expected, strict=True):
        assert abs(segment["start_ms"] - start) <= 20
        assert abs(segment["end_ms"] - end) <= 20


def test_voiced_segments_when_gap_shorter_than_min_gap_then_merged() -> None:
    signal = np.concatenate([sine(440, 0.5), silence(0.08), sine(440, 0.5)])

    segments = features.voiced_segments(signal, RATE, min_gap_ms=150)

    assert len(segments) == 1
    assert segments[0]["start_ms"] == 0
    assert abs(segments[0]["end_ms"] - 1080) <= 20


def test_voiced_segments_when_click_shorter_than_min_segment_then_dropped() -> None:
    signal = np.concatenate([silence(0.5), sine(1000, 0.02), silence(0.5)])

    assert features.voiced_segments(signal, RATE, min_segment_ms=60) == []


def test_voiced_segments_when_silence_then_empty() -> None:
    assert features.voiced_segments(silence(1.0), RATE) == []


# --- pitch ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16_000, 44_100, 48_000])
@pytest.mark.parametrize("hz", [70.0, 110.0, 220.0, 440.0, 880.0])
def test_estimate_pitch_hz_when_pure_sine_then_within_2_percent(hz: float, rate: int) -> None:
    pitch = features.estimate_pitch_hz(sine(hz, 1.0, rate=rate), rate)

    assert pitch is not None
    assert pitch == pytest.approx(hz, rel=0.02)


def test_estimate_pitch_hz_when_440_sine_then_within_half_a_percent() -> None:
    pitch = features.estimate_pitch_hz(sine(440, 2.0), RATE)

    assert pitch == pytest.approx(440, rel=0.005)


def test_estimate_pitch_hz_when_rich_harmonics_then_fundamental_not_an_octave_off() -> None:
    t = np.arange(RATE) / RATE
    voice = sum((0.3 / k) * np.sin(2 * np.pi * 150 * k * t) for k in range(1, 8))

    assert features.estimate_pitch_hz(voice.astype(np.float32), RATE) == pytest.approx(
        150, rel=0.02
    )


def test_estimate_pitch_hz_when_sine_with_noise_then_still_found() -> None:
    rng = np.random.default_rng(1)
    noisy = sine(200, 1.0) + rng.normal(0, 0.1, RATE).astype(np.float32)

    assert features.estimate_pitch_hz(noisy, RATE) == pytest.approx(200, rel=0.02)


def test_estimate_pitch_hz_when_only_voiced_part_is_periodic_then_silence_ignored() -> None:
    signal = np.concatenate([silence(1.0), sine(330, 0.5), silence(1.0)])

    assert features.estimate_pitch_hz(signal, RATE) == pytest.approx(330, rel=0.02)


def test_estimate_pitch_hz_when_white_noise_then_none() -> None:
    noise = np.random.default_rng(2).normal(0, 0.2, RATE).astype(np.float32)

    assert features.estimate_pitch_hz(noise, RATE) is None


def test_estimate_pitch_hz_when_silence_or_too_short_then_none() -> None:
    assert features.estimate_pitch_hz(silence(1.0), RATE) is None
    assert features.estimate_pitch_hz(sine(440, 0.01), RATE) is None


def test_pitch_track_when_glide_from_200_to_300_hz_then_range_spans_it() -> None:
    t = np.arange(2 * RATE) / RATE
    hz = 200 + 50 * t  # instantaneous frequency, 200 → 300 Hz over 2 s
    glide = (0.5 * np.sin(2 * np.pi * np.cumsum(hz) / RATE)).astype(np.float32)

    track = features.pitch_track(glide, RATE)
    spread = features.pitch_range_hz(track)

    assert track.size > 80  # one estimate per 20 ms hop
    assert np.all(np.diff(track) > -2), "a rising glide tracks as rising"
    assert spread is not None
    assert spread[0] == pytest.approx(205, rel=0.02)  # 5th percentile of a linear sweep
    assert spread[1] == pytest.approx(295, rel=0.02)
    assert float(np.median(track)) == pytest.approx(250, rel=0.02)


def test_pitch_range_hz_when_one_frame_is_an_octave_error_then_it_does_not_set_the_range() -> None:
    track = np.concatenate([np.full(99, 150.0), [300.0]])

    assert features.pitch_range_hz(track) == (150.0, 150.0)


def test_pitch_range_hz_when_no_periodic_frames_then_none() -> None:
    assert features.pitch_range_hz(features.pitch_track(silence(1.0), RATE)) is None


def test_segments_per_minute_when_4_segments_in_30_s_then_8() -> None:
    assert features.segments_per_minute(4, 30_000) == pytest.approx(8.0)


def test_segments_per_minute_when_no_audio_then_none() -> None:
    assert features.segments_per_minute(0, 0) is None


# --- integrated loudness -------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16_000, 44_100, 48_000])
def test_integrated_loudness_when_full_scale_997_hz_sine_then_minus_3_01_lufs(rate: int) -> None:
    # BS.1770's own calibration point: a 0 dBFS 997 Hz sine in one channel reads -3.01 LKFS.
    tone = sine(997, 3.0, amplitude=1.0, rate=rate)

    assert features.integrated_loudness_lufs(tone[:, None], rate) == pytest.approx(-3.01, abs=0.05)


def test_integrated_loudness_when_two_identical_channels_then_3_db_louder_than_one() -> None:
    tone = sine(997, 2.0, amplitude=0.1)

    mono = features.integrated_loudness_lufs(tone[:, None], RATE)
    stereo = features.integrated_loudness_lufs(np.stack([tone, tone], axis=1), RATE)

    assert mono == pytest.approx(-23.01, abs=0.05)
    assert stereo is not None and mono is not None
    assert stereo - mono == pytest.approx(3.01, abs=0.02)


def test_integrated_loudness_when_pauses_inserted_then_gating_keeps_it_while_rms_drops() -> None:
    tone = sine(997, 2.0, amplitude=0.1)
    with_pauses = np.concatenate([tone, silence(6.0), tone])

    plain = features.integrated_loudness_lufs(tone[:, None], RATE)
    paused = features.integrated_loudness_lufs(with_pauses[:, None], RATE)

    # Only the few 400 ms blocks straddling a pause's edges count, slightly lower.
    assert paused == pytest.approx(plain, abs=0.5)
    rms_plain, rms_paused = features.rms_dbfs(tone), features.rms_dbfs(with_pauses)
    assert rms_plain is not None and rms_paused is not None
    assert rms_plain - rms_paused > 3  # what RMS would have reported instead


def test_integrated_loudness_when_low_tone_then_high_pass_weighting_lowers_it() -> None:
    # The RLB high-pass: at 30 Hz the K filter is ≈ 8.4 dB down on the same level at 997 Hz.
    low = features.integrated_loudness_lufs(sine(30, 3.0, amplitude=0.5)[:, None], RATE)
    mid = features.integrated_loudness_lufs(sine(997, 3.0, amplitude=0.5)[:, None], RATE)

    assert low is not None and mid is not None
    assert mid - low == pytest.approx(8.4, abs=0.6)


def test_integrated_loudness_when_silence_or_shorter_than_one_block_then_none() -> None:
    assert features.integrated_loudness_lufs(silence(2.0)[:, None], RATE) is None
    assert features.integrated_loudness_lufs(sine(997, 0.3)[:, None], RATE) is None


def ffmpeg_ebur128_lufs(samples: np.ndarray, rate: int) -> float:
    """ffmpeg's own EBU R 128 meter on the same samples (it prints to 0.1 LU)."""
    command = ["ffmpeg", "-nostats", "-hide_banner", "-f", "wav", "-i", "pipe:0"]
    result = subprocess.run(
        [*command, "-af", "ebur128", "-f", "null", "-"],
        input=to_wav(samples, rate),
        capture_output=True,
        check=True,
        timeout=60,
    )
    found = re.findall(r"I:\s+(-?[\d.]+) LUFS", result.stderr.decode())
    return float(found[-1])


@needs_ffmpeg
@pytest.mark.parametrize("rate", [16_000, 48_000])
def test_integrated_loudness_when_noise_and_bursts_then_agrees_with_ffmpeg_ebur128(
    rate: int,
) -> None:
    rng = np.random.default_rng(7)
    noise = rng.normal(0, 0.1, (3 * rate, 2)).astype(np.float32)
    bursts = tone_bursts(3, 4.0, rate=rate)

    for signal in (noise, bursts):
        ours = features.integrated_loudness_lufs(signal.reshape(signal.shape[0], -1), rate)
        assert ours == pytest.approx(ffmpeg_ebur128_lufs(signal, rate), abs=0.1)
