"""The signal features, each on a synthetic signal whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from analysis_server import features

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
