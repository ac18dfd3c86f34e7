"""How well a take lines up with the reference (the original line), as small pure functions.

The comparison works on energy envelopes (level in dB every 10 ms), not on waveforms: a dub
is another voice, often another microphone and room, so its samples never resemble the
original's, but its pattern of syllables, words and pauses should. Two questions, answered in
order:

1. **Offset** — where does the take start relative to the reference? Cross-correlation of
   the z-scored envelopes (by FFT), peak refined to a fraction of a frame by a parabola.
   Positive = the take is late. A recording starts whenever the user pressed the button, so
   the offset is reported but does not lower the score.
2. **Timing after alignment** — with the offset removed, do the words land at the same
   moments? Dynamic time warping over the envelopes finds the cheapest way to match the two
   in time; the further its path strays from the diagonal, the more the take drifts or
   rushes. Its mean deviation in ms becomes the timing component.

The 0–100 `sync_score` is a weighted geometric mean of three components in [0, 1] (envelope
correlation at the offset, timing, and how much sound each has), so one bad component pulls
the score down hard: a take with the same length of sound but different rhythm does not get
half marks for the length alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analysis_server.features import SILENCE_THRESHOLD_DBFS, FloatArray, frame_rms_dbfs

Float64Array = npt.NDArray[np.float64]

ENVELOPE_HOP_MS = 10.0
# Quieter than this is "nothing": room tone and hiss must not shape the envelope.
ENVELOPE_FLOOR_DBFS = -60.0
DTW_HOP_MS = 20.0
# DTW costs O(n·m) memory and time; longer clips are compared on coarser frames.
DTW_MAX_FRAMES = 1500
# Charged per frame of a non-diagonal DTW step, in z-score units: where both signals are
# flat (pauses) every path costs the same, and without it the path would wander at random.
DTW_STEP_PENALTY = 0.1
# A mean drift of this many ms halves the timing component (roughly: one syllable late).
TIMING_HALF_MS = 80.0
WEIGHTS = {"envelope": 0.5, "timing": 0.3, "sound_balance": 0.2}


def energy_envelope(
    mono: FloatArray,
    sample_rate: int,
    *,
    hop_ms: float = ENVELOPE_HOP_MS,
    floor_dbfs: float = ENVELOPE_FLOOR_DBFS,
) -> Float64Array:
    """Level in dBFS per `hop_ms` frame, floored at `floor_dbfs` (so silence is flat).

    Decibels, not linear RMS: a dub recorded quieter is the same shape shifted down, which
    the z-scoring below removes; in linear terms it would be a different shape."""
    if mono.size == 0:
        return np.empty(0, dtype=np.float64)
    levels = frame_rms_dbfs(mono, sample_rate, frame_ms=hop_ms).astype(np.float64)
    return np.maximum(np.nan_to_num(levels, nan=floor_dbfs, neginf=floor_dbfs), floor_dbfs)


def zscore(values: Float64Array) -> Float64Array:
    """Zero mean, unit variance; all zeros for a constant signal (nothing to align)."""
    if values.size == 0:
        return values.astype(np.float64)
    centred = values - values.mean()
    spread = float(centred.std())
    return centred / spread if spread > 1e-9 else np.zeros_like(centred)


@dataclass(frozen=True)
class Alignment:
    lag_frames: int  # whole frames the take is late by (negative: early)
    offset_ms: float  # refined to a fraction of a frame
    correlation: float  # Pearson r of the envelopes side by side at `lag_frames`


def pearson(a: Float64Array, b: Float64Array) -> float:
    """Correlation of two equally long sequences; 0.0 when either is constant or empty."""
    if a.size < 2:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b / denominator) if denominator > 1e-12 else 0.0


def side_by_side(
    reference: Float64Array, take: Float64Array, lag: int, *, fill: float
) -> tuple[Float64Array, Float64Array]:
    """Both envelopes on the reference's clock with the take moved `lag` frames earlier,
    over everything either covers; where one has no frames it reads `fill` (silence).

    The union, not the overlap: sound in one that meets nothing in the other is exactly what
    is out of sync, and judging only the overlap would let an unrelated take score well at a
    lag where a short stretch of it happens to match."""
    start = min(0, -lag)
    end = max(reference.size, take.size - lag)
    ref_side = np.full(end - start, fill, dtype=np.float64)
    take_side = np.full(end - start, fill, dtype=np.float64)
    ref_side[-start : -start + reference.size] = reference
    take_side[-start - lag : -start - lag + take.size] = take
    return ref_side, take_side


def align(
    reference: Float64Array, take: Float64Array, *, hop_ms: float, max_offset_ms: float
) -> Alignment:
    """The lag (within ±max_offset_ms) that best lines the take's envelope up with the
    reference's, by cross-correlation of their z-scores.

    The raw correlation sum is maximised, not a per-overlap average: averaging would let a
    tiny overlap of two loud frames beat the true, long alignment."""
    x, y = zscore(reference), zscore(take)
    if x.size == 0 or y.size == 0:
        return Alignment(0, 0.0, 0.0)
    n_fft = 1 << int(np.ceil(np.log2(x.size + y.size)))
    # c[k] = Σ x[n]·y[n+k]: positive k means the take's events come k frames later.
    full = np.fft.irfft(np.conj(np.fft.rfft(x, n_fft)) * np.fft.rfft(y, n_fft), n_fft)
    max_lag = int(max_offset_ms // hop_ms)
    lags = np.arange(-min(max_lag, x.size - 1), min(max_lag, y.size - 1) + 1)
    values = full[lags % n_fft]
    best = int(np.argmax(values))
    shift = 0.0
    if 0 < best < values.size - 1:
        left, centre, right = values[best - 1], values[best], values[best + 1]
        denominator = left - 2 * centre + right
        if abs(denominator) > 1e-12:
            shift = float(np.clip(0.5 * (left - right) / denominator, -0.5, 0.5))
    lag = int(lags[best])
    fill = float(min(reference.min(), take.min()))
    correlation = pearson(*side_by_side(reference, take, lag, fill=fill))
    return Alignment(lag_frames=lag, offset_ms=(lag + shift) * hop_ms, correlation=correlation)


def downsample(values: Float64Array, factor: int) -> Float64Array:
    """Means of `factor` consecutive values (the last group may be shorter)."""
    if factor <= 1 or values.size == 0:
        return values
    whole = values.size // factor * factor
    means = values[:whole].reshape(-1, factor).mean(axis=1)
    if whole < values.size:
        means = np.append(means, values[whole:].mean())
    result: npt.NDArray[np.float64] = means
    return result


def dtw_path(
    a: Float64Array, b: Float64Array, *, step_penalty: float = DTW_STEP_PENALTY
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], float]:
    """Dynamic time warping of `a` against `b` with |a_i − b_j| as the cost.

    Returns the path as index arrays (i, j), from (0, 0) to the ends, and its mean cost per
    step. Each row is computed with numpy rather than cell by cell: a horizontal run is a
    running minimum over a cumulative sum (D[i, j] = C[j] + min_{k≤j}(A[k] − C[k]), with A
    the best entry from the row above and C the row's cumulative cost), so the Python loop
    runs once per row, not once per cell.
    """
    n, m = a.size, b.size
    if n == 0 or m == 0:
        empty = np.empty(0, dtype=np.intp)
        return empty, empty, 0.0
    cost = np.abs(a[:, None] - b[None, :])
    total = np.empty((n, m), dtype=np.float64)
    step = cost + step_penalty
    total[0] = np.cumsum(step[0]) - step_penalty  # (0, 0) itself is not a step
    for i in range(1, n):
        above = total[i - 1]
        entry = np.empty(m, dtype=np.float64)
        entry[0] = above[0] + step[i, 0]
        entry[1:] = np.minimum(above[:-1] + cost[i, 1:], above[1:] + step[i, 1:])
        running = np.cumsum(step[i])
        total[i] = running + np.minimum.accumulate(entry - running)
    # Walk back from the end, preferring the diagonal on ties (the cheaper, straighter path).
    i, j = n - 1, m - 1
    rows, cols = [i], [j]
    while i > 0 or j > 0:
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            diagonal = total[i - 1, j - 1] + cost[i, j]
            up = total[i - 1, j] + step[i, j]
            if total[i, j] >= diagonal - 1e-9:
                i, j = i - 1, j - 1
            elif total[i, j] >= up - 1e-9:
                i -= 1
            else:
                j -= 1
        rows.append(i)
        cols.append(j)
    path_i = np.array(rows[::-1], dtype=np.intp)
    path_j = np.array(cols[::-1], dtype=np.intp)
    return path_i, path_j, float(cost[path_i, path_j].mean())


def path_deviation_frames(path_i: npt.NDArray[np.intp], path_j: npt.NDArray[np.intp]) -> float:
    """Mean distance of a warping path from the diagonal, in frames (0 = same timing)."""
    if path_i.size == 0:
        return 0.0
    return float(np.mean(np.abs(path_i - path_j)))


def sound_balance(reference: Float64Array, take: Float64Array, *, threshold_dbfs: float) -> float:
    """Shorter over longer total time with sound (frames at or above `threshold_dbfs`):
    1.0 when both hold as much sound, 0.0 when one of them is silent."""
    ref_active = int(np.count_nonzero(reference >= threshold_dbfs))
    take_active = int(np.count_nonzero(take >= threshold_dbfs))
    longest = max(ref_active, take_active)
    return min(ref_active, take_active) / longest if longest else 0.0


def timing_component(deviation_ms: float, *, half_ms: float = TIMING_HALF_MS) -> float:
    """1.0 for no drift, 0.5 at `half_ms`, towards 0 beyond (a smooth hyperbola, no cliff)."""
    return 1.0 / (1.0 + max(deviation_ms, 0.0) / half_ms)


def combine(components: dict[str, float], weights: dict[str, float] = WEIGHTS) -> float:
    """0–100: the weighted geometric mean of components in [0, 1]."""
    total = sum(weights.values())
    log_sum = sum(
        weights[name] * np.log(max(components[name], 1e-6)) for name in weights
    )  # a zero component would be -inf: floored so the score is 0.0, not NaN
    return float(100 * np.exp(log_sum / total))


@dataclass(frozen=True)
class SyncMeasures:
    offset_ms: float
    envelope_correlation: float
    timing_deviation_ms: float
    dtw_cost: float
    components: dict[str, float]
    sync_score: float


def compare(
    reference: FloatArray,
    reference_rate: int,
    take: FloatArray,
    take_rate: int,
    *,
    max_offset_ms: float = 5000.0,
) -> SyncMeasures:
    """Everything `sync` reports, for two mono signals at any sample rates."""
    ref_env = energy_envelope(reference, reference_rate)
    take_env = energy_envelope(take, take_rate)
    alignment = align(ref_env, take_env, hop_ms=ENVELOPE_HOP_MS, max_offset_ms=max_offset_ms)
    ref_part, take_part = side_by_side(
        ref_env, take_env, alignment.lag_frames, fill=ENVELOPE_FLOOR_DBFS
    )

    factor = max(round(DTW_HOP_MS / ENVELOPE_HOP_MS), -(-ref_part.size // DTW_MAX_FRAMES))
    path_i, path_j, dtw_cost = dtw_path(
        zscore(downsample(ref_part, factor)), zscore(downsample(take_part, factor))
    )
    deviation_ms = path_deviation_frames(path_i, path_j) * factor * ENVELOPE_HOP_MS
    components = {
        "envelope": max(alignment.correlation, 0.0) ** 2,
        "timing": timing_component(deviation_ms) if path_i.size else 0.0,
        "sound_balance": sound_balance(ref_env, take_env, threshold_dbfs=SILENCE_THRESHOLD_DBFS),
    }
    return SyncMeasures(
        offset_ms=alignment.offset_ms,
        envelope_correlation=alignment.correlation,
        timing_deviation_ms=deviation_ms,
        dtw_cost=dtw_cost,
        components=components,
        sync_score=combine(components),
    )
