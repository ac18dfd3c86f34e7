"""Signal features as small pure functions over numpy arrays.

Conventions: samples are float32 in [-1, 1], full scale = 1.0, and levels are dBFS in the
convention pydub and most meters use (a full-scale sine reads -3.01 dBFS RMS, 0 dBFS peak).
Mono signals are 1-D; multichannel ones are (frames, channels). A level of "no signal at all"
is None rather than -inf, because the result travels as JSON, which has no infinities.

Nothing here knows about pydub, files or HTTP, so each function is tested on synthetic signals.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

# Frames quieter than this count as silence. -50 dBFS sits well above the noise floor of a
# 16-bit recording and of lossy codecs' dither, and well below quiet speech (-30…-20 dBFS).
SILENCE_THRESHOLD_DBFS = -50.0
# |x| at or above this fraction of full scale counts as clipped: 16-bit full scale is
# 32767/32768 ≈ 0.99997, and lossy codecs overshoot slightly around a clipped original.
CLIPPING_THRESHOLD = 0.999


class Segment(TypedDict):
    start_ms: int
    end_ms: int


def pcm_to_float(raw: bytes, *, sample_width: int, channels: int) -> FloatArray:
    """Little-endian signed PCM (pydub's internal layout: 8-bit already made signed) to a
    (frames, channels) float32 array scaled so that full scale is 1.0."""
    if sample_width not in (1, 2, 3, 4):
        raise ValueError(f"unsupported sample width: {sample_width}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    frame_bytes = sample_width * channels
    usable = len(raw) - len(raw) % frame_bytes
    buffer = np.frombuffer(raw, dtype=np.uint8, count=usable)
    if sample_width == 3:
        # No 24-bit dtype: place each sample in the top three bytes of an int32.
        padded = np.zeros((usable // 3, 4), dtype=np.uint8)
        padded[:, 1:] = buffer.reshape(-1, 3)
        ints = padded.view("<i4").reshape(-1)
        scale = float(2**31)
    else:
        ints = buffer.view({1: "i1", 2: "<i2", 4: "<i4"}[sample_width])
        scale = float(2 ** (8 * sample_width - 1))
    samples = ints.astype(np.float32)
    samples *= np.float32(1 / scale)  # in place: clips can be hundreds of MB
    return samples.reshape(-1, channels)


def to_mono(samples: FloatArray) -> FloatArray:
    """Average the channels: the level and timing features describe what a listener hears."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    if samples.shape[1] == 1:
        return samples[:, 0]  # a view: a mono clip is not held twice
    # Summed channel by channel in float32: a float64 mean would allocate 4x the mono size.
    mono = samples[:, 0].astype(np.float32, copy=True)
    for channel in range(1, samples.shape[1]):
        mono += samples[:, channel]
    mono /= samples.shape[1]
    return mono


def duration_ms(frame_count: int, sample_rate: int) -> int:
    return round(frame_count * 1000 / sample_rate)


def amplitude_to_dbfs(amplitude: float) -> float | None:
    return None if amplitude <= 0 else float(20 * np.log10(amplitude))


def _mean_square(samples: FloatArray) -> float:
    """In float64 (a float32 sum of millions of squares drifts), without a float64 copy."""
    flat = samples.reshape(-1)
    return float(np.einsum("i,i->", flat, flat, dtype=np.float64) / flat.size)


def rms_dbfs(samples: FloatArray) -> float | None:
    """RMS level of the whole signal; None for digital silence (or no samples)."""
    if samples.size == 0:
        return None
    return amplitude_to_dbfs(float(np.sqrt(_mean_square(samples))))


def peak_dbfs(samples: FloatArray) -> float | None:
    if samples.size == 0:
        return None
    return amplitude_to_dbfs(max(float(samples.max()), -float(samples.min())))


def clipping_ratio(samples: FloatArray, *, threshold: float = CLIPPING_THRESHOLD) -> float:
    """Fraction of samples at or beyond `threshold` of full scale. Pass every channel, not a
    mono mix: one clipped channel averaged with a clean one would hide below the threshold."""
    if samples.size == 0:
        return 0.0
    clipped = np.count_nonzero(samples >= threshold) + np.count_nonzero(samples <= -threshold)
    return float(clipped / samples.size)


def frame_rms_dbfs(mono: FloatArray, sample_rate: int, *, frame_ms: float = 20.0) -> FloatArray:
    """RMS level per non-overlapping frame (the last one may be short); -inf where silent."""
    frame_len = max(1, round(sample_rate * frame_ms / 1000))
    whole = mono.size // frame_len
    # A view for the whole frames (no copy of a possibly long clip), the remainder apart.
    frames = mono[: whole * frame_len].reshape(whole, frame_len)
    power = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / frame_len
    if mono.size % frame_len:
        tail = mono[whole * frame_len :]
        power = np.append(power, _mean_square(tail))
    with np.errstate(divide="ignore"):
        decibels: npt.NDArray[np.float32] = (10 * np.log10(power)).astype(np.float32)
    return decibels


def _active_frames(
    mono: FloatArray, sample_rate: int, *, threshold_dbfs: float, frame_ms: float
) -> tuple[npt.NDArray[np.bool_], int]:
    frame_len = max(1, round(sample_rate * frame_ms / 1000))
    levels = frame_rms_dbfs(mono, sample_rate, frame_ms=frame_ms)
    return levels >= threshold_dbfs, frame_len


def silence_ratio(
    mono: FloatArray,
    sample_rate: int,
    *,
    threshold_dbfs: float = SILENCE_THRESHOLD_DBFS,
    frame_ms: float = 20.0,
) -> float:
    """Share of the duration spent in frames below `threshold_dbfs`; 1.0 for no samples."""
    if mono.size == 0:
        return 1.0
    active, frame_len = _active_frames(
        mono, sample_rate, threshold_dbfs=threshold_dbfs, frame_ms=frame_ms
    )
    lengths = np.full(active.size, frame_len, dtype=np.int64)
    lengths[-1] = mono.size - (active.size - 1) * frame_len
    return float(lengths[~active].sum() / mono.size)


def voiced_segments(
    mono: FloatArray,
    sample_rate: int,
    *,
    threshold_dbfs: float = SILENCE_THRESHOLD_DBFS,
    frame_ms: float = 20.0,
    min_gap_ms: float = 150.0,
    min_segment_ms: float = 60.0,
) -> list[Segment]:
    """Stretches of sound between silences, in milliseconds.

    "Voiced" in the product's sense (someone is making sound), not the phonetic one: this is
    level-based activity detection. Gaps shorter than `min_gap_ms` (stops, breaths between
    words) do not split a segment; blips shorter than `min_segment_ms` (clicks) are dropped.
    """
    if mono.size == 0:
        return []
    active, frame_len = _active_frames(
        mono, sample_rate, threshold_dbfs=threshold_dbfs, frame_ms=frame_ms
    )
    # Edges of runs of active frames, as frame indices [start, end).
    padded = np.concatenate(([False], active, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    runs = edges.reshape(-1, 2)
    total_ms = duration_ms(mono.size, sample_rate)

    def to_ms(frame_index: int) -> int:
        return min(total_ms, duration_ms(frame_index * frame_len, sample_rate))

    merged: list[list[int]] = []
    for start, end in runs.tolist():
        if merged and to_ms(start) - merged[-1][1] < min_gap_ms:
            merged[-1][1] = to_ms(end)
        else:
            merged.append([to_ms(start), to_ms(end)])
    return [
        Segment(start_ms=start, end_ms=end)
        for start, end in merged
        if end - start >= min_segment_ms
    ]


def pitch_track(
    mono: FloatArray,
    sample_rate: int,
    *,
    fmin: float = 60.0,
    fmax: float = 1000.0,
    frame_ms: float = 40.0,
    hop_ms: float = 20.0,
    voicing_threshold: float = 0.5,
    silence_threshold_dbfs: float = SILENCE_THRESHOLD_DBFS,
    block_frames: int = 512,
) -> npt.NDArray[np.float64]:
    """Fundamental frequency (Hz) of each periodic frame, in time order, by autocorrelation.

    A frame counts when it is above the silence threshold and its normalised autocorrelation
    peak within [fmin, fmax] reaches `voicing_threshold` (noise stays far below). The first
    peak within 90 % of the best one is taken, not the best itself, which avoids the classic
    octave-down error (every multiple of the period correlates as well as the period); a
    parabola through the peak and its neighbours gives sub-sample lag precision. Empty when
    no frame is periodic enough. Frames are processed `block_frames` at a time, so memory
    stays bounded on long clips.
    """
    none = np.empty(0, dtype=np.float64)
    frame_len = round(sample_rate * frame_ms / 1000)
    hop = max(1, round(sample_rate * hop_ms / 1000))
    lag_min = max(2, int(np.floor(sample_rate / fmax)))
    lag_max = int(np.ceil(sample_rate / fmin))
    if mono.size < frame_len or lag_max + 2 >= frame_len:
        return none
    n_frames = 1 + (mono.size - frame_len) // hop
    n_fft = 1 << int(np.ceil(np.log2(2 * frame_len)))
    threshold_power = 10 ** (silence_threshold_dbfs / 10)
    signal = mono.astype(np.float32, copy=False)
    estimates: list[npt.NDArray[np.float64]] = []

    for first in range(0, n_frames, block_frames):
        count = min(block_frames, n_frames - first)
        starts = (first + np.arange(count)) * hop
        frames = signal[starts[:, None] + np.arange(frame_len)[None, :]].astype(np.float64)
        loud = np.mean(frames * frames, axis=1) >= threshold_power
        if not loud.any():
            continue
        frames = frames[loud]
        frames -= frames.mean(axis=1, keepdims=True)
        spectrum = np.fft.rfft(frames, n=n_fft, axis=1)
        acf = np.fft.irfft(spectrum.real**2 + spectrum.imag**2, n=n_fft, axis=1)
        # Normalised cross-correlation: divide each lag by the energies of the two overlapping
        # parts. Unlike acf/acf[0] this does not fall off with the lag, which would pull peaks
        # towards shorter lags (≈ 1 % sharp at 110 Hz) and reject low voices as unvoiced.
        # Lags lag_min-1 … lag_max+1 so every candidate in range has both neighbours.
        lags = np.arange(lag_min - 1, lag_max + 2)
        cumulative = np.concatenate(
            (np.zeros((frames.shape[0], 1)), np.cumsum(frames * frames, axis=1)), axis=1
        )
        head = cumulative[:, frame_len - lags]
        tail = cumulative[:, -1:] - cumulative[:, lags]
        with np.errstate(divide="ignore", invalid="ignore"):
            window = acf[:, lags] / np.sqrt(head * tail)
        window = np.nan_to_num(window, nan=0.0, posinf=0.0, neginf=0.0)
        inner = window[:, 1:-1]
        best = inner.max(axis=1, keepdims=True)
        is_peak = (inner >= window[:, :-2]) & (inner > window[:, 2:]) & (inner >= 0.9 * best)
        has_peak = is_peak.any(axis=1) & (best[:, 0] >= voicing_threshold)
        if not has_peak.any():
            continue
        rows = np.flatnonzero(has_peak)
        first_peak = np.argmax(is_peak[rows], axis=1)
        # Noise wrinkles a peak into several local maxima; taking the first of them would bias
        # the estimate sharp, so settle on the highest point within ±15 % of that lag.
        positions = np.arange(inner.shape[1])[None, :]
        reach = np.maximum(2, 0.15 * (lag_min + first_peak))[:, None]
        near = np.abs(positions - first_peak[:, None]) <= reach
        index = np.argmax(np.where(near, inner[rows], -np.inf), axis=1)
        left = window[rows, index]
        centre = window[rows, index + 1]
        right = window[rows, index + 2]
        denominator = left - 2 * centre + right
        shift = np.where(np.abs(denominator) > 1e-12, 0.5 * (left - right) / denominator, 0.0)
        peak_lags = lag_min + index + np.clip(shift, -0.5, 0.5)
        estimates.append(sample_rate / peak_lags)

    return np.concatenate(estimates) if estimates else none


def estimate_pitch_hz(mono: FloatArray, sample_rate: int, **options: Any) -> float | None:
    """Median F0 over periodic frames (see `pitch_track` for the options); None if none.

    The median, not the mean: a few octave errors or a consonant's stray period must not
    move the answer."""
    track = pitch_track(mono, sample_rate, **options)
    return float(np.median(track)) if track.size else None


def pitch_range_hz(
    track: npt.NDArray[np.float64], *, low_percentile: float = 5.0, high_percentile: float = 95.0
) -> tuple[float, float] | None:
    """The spread of a pitch track as (low, high) percentiles; None for an empty track.

    Percentiles rather than min/max, because a single mis-tracked frame would otherwise set
    the range: the 5th–95th percentile is what a listener would call the voice's range."""
    if track.size == 0:
        return None
    low, high = np.percentile(track, [low_percentile, high_percentile])
    return float(low), float(high)


def segments_per_minute(segment_count: int, total_ms: int) -> float | None:
    """Speech-rate proxy: voiced stretches per minute of audio; None when there is no audio.

    Real speech rate is syllables per minute, which needs a phonetic model; stretches of
    sound between pauses rise and fall with it (a hurried take has more, shorter ones per
    minute than a measured one), which is what comparing a take with the original needs."""
    if total_ms <= 0:
        return None
    return segment_count * 60_000 / total_ms


# --- integrated loudness (ITU-R BS.1770-4 / EBU R 128) --------------------------------------

# The K-weighting filter as libebur128 and ffmpeg define it: the analogue parameters that
# reproduce BS.1770's published 48 kHz coefficients exactly, so any sample rate gets the
# filter the standard means (re-using the 48 kHz coefficients at 16 kHz would be wrong).
_SHELF_HZ, _SHELF_GAIN_DB, _SHELF_Q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
_HIGHPASS_HZ, _HIGHPASS_Q = 38.13547087602444, 0.5003270373238773
LOUDNESS_BLOCK_MS = 400
LOUDNESS_STEP_MS = 100  # 75 % overlap between gating blocks
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0


def k_weighting_biquads(sample_rate: int) -> tuple[tuple[list[float], list[float]], ...]:
    """(b, a) of BS.1770's two stages at `sample_rate`: a high shelf (+4 dB above ≈ 1.7 kHz,
    the head's effect) then a high-pass at ≈ 38 Hz (RLB weighting)."""
    k = np.tan(np.pi * _SHELF_HZ / sample_rate)
    vh = 10 ** (_SHELF_GAIN_DB / 20)
    vb = vh**0.4996667741545416
    a0 = 1 + k / _SHELF_Q + k * k
    shelf_b = [
        (vh + vb * k / _SHELF_Q + k * k) / a0,
        2 * (k * k - vh) / a0,
        (vh - vb * k / _SHELF_Q + k * k) / a0,
    ]
    shelf = (shelf_b, [1.0, 2 * (k * k - 1) / a0, (1 - k / _SHELF_Q + k * k) / a0])
    k = np.tan(np.pi * _HIGHPASS_HZ / sample_rate)
    a0 = 1 + k / _HIGHPASS_Q + k * k
    highpass = ([1.0, -2.0, 1.0], [1.0, 2 * (k * k - 1) / a0, (1 - k / _HIGHPASS_Q + k * k) / a0])
    return shelf, highpass


def k_weighting_response(n_fft: int, sample_rate: int) -> npt.NDArray[np.complex128]:
    """The K filter's complex frequency response at the `n_fft`-point rfft bins."""
    z = np.exp(-1j * np.pi * np.arange(n_fft // 2 + 1) / (n_fft // 2))  # z^-1 per bin
    response = np.ones(z.size, dtype=np.complex128)
    for b, a in k_weighting_biquads(sample_rate):
        response *= (b[0] + b[1] * z + b[2] * z * z) / (a[0] + a[1] * z + a[2] * z * z)
    return response


def _k_weighting_taps(sample_rate: int) -> int:
    """How long the filter rings: until its slowest pole has decayed by 160 dB."""
    radii = [np.sqrt(abs(a[2])) for _b, a in k_weighting_biquads(sample_rate)]
    return int(np.ceil(np.log(1e-8) / np.log(max(radii)))) + 1


def k_weighted_block_power(
    channel: FloatArray, sample_rate: int, *, step_len: int, chunk_steps: int = 64
) -> npt.NDArray[np.float64]:
    """Mean square of the K-weighted channel per `step_len` samples (the last step partial).

    The IIR filter is applied as its (decayed-to-nothing) impulse response by FFT overlap-add,
    chunk by chunk: numpy has no vectorised recursive filter, a Python loop over samples
    would take minutes, and the whole filtered signal is never held in memory (only the
    per-step sums are kept)."""
    taps = _k_weighting_taps(sample_rate)
    chunk = step_len * chunk_steps
    n_fft = 1 << int(np.ceil(np.log2(chunk + taps)))
    response = k_weighting_response(n_fft, sample_rate)
    sums: list[npt.NDArray[np.float64]] = []
    carry = np.zeros(taps, dtype=np.float64)
    for start in range(0, channel.size, chunk):
        piece = channel[start : start + chunk].astype(np.float64)
        filtered = np.fft.irfft(np.fft.rfft(piece, n_fft) * response, n_fft)[: piece.size + taps]
        filtered[:taps] += carry
        carry = filtered[piece.size : piece.size + taps].copy()
        out = filtered[: piece.size]
        whole = out.size // step_len * step_len
        steps = out[:whole].reshape(-1, step_len)
        sums.append(np.einsum("ij,ij->i", steps, steps) / step_len)
        if whole < out.size:
            tail = out[whole:]
            sums.append(np.array([float(tail @ tail) / tail.size]))
    return np.concatenate(sums) if sums else np.empty(0, dtype=np.float64)


def integrated_loudness_lufs(samples: FloatArray, sample_rate: int) -> float | None:
    """Integrated loudness in LUFS (BS.1770-4 gating), every channel weighted 1.0.

    400 ms blocks every 100 ms; blocks under -70 LUFS are dropped (absolute gate), then those
    more than 10 LU below the mean of the rest (relative gate), so pauses do not drag a
    spoken line's loudness down the way they drag its RMS level. A full-scale 997 Hz sine in
    one channel reads -3.01 LUFS. Channel weights are all 1.0 because uploads carry no
    surround layout (the standard's 1.41 applies to surround channels only). None when the
    clip is shorter than one block or every block is gated out (silence).
    """
    frames = samples.reshape(samples.shape[0], -1)
    step_len = round(sample_rate * LOUDNESS_STEP_MS / 1000)
    steps_per_block = LOUDNESS_BLOCK_MS // LOUDNESS_STEP_MS
    whole_steps = frames.shape[0] // step_len
    if whole_steps < steps_per_block:
        return None
    total = np.zeros(whole_steps, dtype=np.float64)
    for index in range(frames.shape[1]):
        power = k_weighted_block_power(
            np.ascontiguousarray(frames[:, index]), sample_rate, step_len=step_len
        )
        total += power[:whole_steps]  # a trailing partial step belongs to no complete block
    kernel = np.ones(steps_per_block) / steps_per_block
    blocks = np.convolve(total, kernel, mode="valid")  # mean power of each 400 ms block
    with np.errstate(divide="ignore"):
        loudness = -0.691 + 10 * np.log10(blocks)
    kept = blocks[loudness > ABSOLUTE_GATE_LUFS]
    if kept.size == 0:
        return None
    relative_gate = -0.691 + 10 * np.log10(kept.mean()) + RELATIVE_GATE_LU
    gated = kept[-0.691 + 10 * np.log10(kept) > relative_gate]
    return float(-0.691 + 10 * np.log10(gated.mean()))
