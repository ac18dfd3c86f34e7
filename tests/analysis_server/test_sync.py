"""Alignment and sync scoring on signals whose true offset and timing are known."""

from __future__ import annotations

import numpy as np
import pytest

from analysis_server import sync
from tests.analysis_server.signals import (
    LINE,
    OTHER_LINE,
    RATE,
    delayed,
    espeak,
    from_wav,
    needs_espeak,
    silence,
    sine,
    tone_bursts,
)

# --- envelope ------------------------------------------------------------------------------


def test_energy_envelope_when_tone_then_silence_then_level_then_floor_every_10_ms() -> None:
    signal = np.concatenate([sine(200, 0.5, amplitude=1.0), silence(0.5)])

    envelope = sync.energy_envelope(signal, RATE)

    assert envelope.size == 100
    assert envelope[:50] == pytest.approx(np.full(50, -3.01), abs=0.05)
    assert np.all(envelope[50:] == sync.ENVELOPE_FLOOR_DBFS)


def test_zscore_when_constant_then_zeros_not_nan() -> None:
    assert np.all(sync.zscore(np.full(10, -60.0)) == 0.0)


# --- alignment -----------------------------------------------------------------------------


@pytest.mark.parametrize("shift_ms", [250.0, 137.0, 1200.0])
def test_align_when_take_is_the_reference_delayed_then_offset_within_20_ms(
    shift_ms: float,
) -> None:
    reference = tone_bursts(1)
    take = delayed(reference, shift_ms)

    alignment = sync.align(
        sync.energy_envelope(reference, RATE),
        sync.energy_envelope(take, RATE),
        hop_ms=sync.ENVELOPE_HOP_MS,
        max_offset_ms=5000,
    )

    assert alignment.offset_ms == pytest.approx(shift_ms, abs=20)
    assert alignment.correlation > 0.95


def test_align_when_take_starts_early_then_offset_is_negative() -> None:
    take = tone_bursts(1)
    reference = delayed(take, 300)

    alignment = sync.align(
        sync.energy_envelope(reference, RATE),
        sync.energy_envelope(take, RATE),
        hop_ms=sync.ENVELOPE_HOP_MS,
        max_offset_ms=5000,
    )

    assert alignment.offset_ms == pytest.approx(-300, abs=20)


def test_align_when_true_offset_beyond_the_limit_then_it_is_not_reported() -> None:
    reference = tone_bursts(1)

    alignment = sync.align(
        sync.energy_envelope(reference, RATE),
        sync.energy_envelope(delayed(reference, 1500), RATE),
        hop_ms=sync.ENVELOPE_HOP_MS,
        max_offset_ms=1000,
    )

    assert abs(alignment.offset_ms) <= 1000


def test_align_when_either_is_empty_then_zero_offset_and_no_correlation() -> None:
    alignment = sync.align(np.empty(0), np.ones(10), hop_ms=sync.ENVELOPE_HOP_MS, max_offset_ms=100)

    assert (alignment.offset_ms, alignment.correlation) == (0.0, 0.0)


# --- DTW -----------------------------------------------------------------------------------


def test_dtw_path_when_sequences_identical_then_diagonal_at_zero_cost() -> None:
    values = np.sin(np.linspace(0, 6, 40))

    rows, cols, cost = sync.dtw_path(values, values)

    assert np.array_equal(rows, cols)
    assert rows.size == 40
    assert cost == 0.0


def test_dtw_path_when_one_value_is_held_longer_then_path_waits_there() -> None:
    a = np.array([0.0, 1.0, 2.0, 3.0])
    b = np.array([0.0, 1.0, 1.0, 1.0, 2.0, 3.0])

    rows, cols, cost = sync.dtw_path(a, b)

    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == [
        (0, 0),
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 4),
        (3, 5),
    ]
    assert cost == 0.0
    assert sync.path_deviation_frames(rows, cols) == pytest.approx(7 / 6)  # 0,0,1,2,2,2


def test_dtw_path_when_compared_with_a_cell_by_cell_reference_then_same_total_cost() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=25), rng.normal(size=31)
    penalty = sync.DTW_STEP_PENALTY

    # The textbook recursion, one cell at a time.
    total = np.full((a.size + 1, b.size + 1), np.inf)
    total[0, 0] = 0.0
    for i in range(1, a.size + 1):
        for j in range(1, b.size + 1):
            cost = abs(a[i - 1] - b[j - 1])
            total[i, j] = min(
                total[i - 1, j - 1] + cost,
                total[i - 1, j] + cost + penalty,
                total[i, j - 1] + cost + penalty,
            )

    rows, cols, _mean = sync.dtw_path(a, b)
    steps = np.abs(a[rows] - b[cols]).sum()
    non_diagonal = sum(
        1 for k in range(1, rows.size) if (rows[k] - rows[k - 1]) + (cols[k] - cols[k - 1]) == 1
    )
    assert steps + penalty * non_diagonal == pytest.approx(total[-1, -1])


# --- components and score ------------------------------------------------------------------


def test_timing_component_when_no_drift_then_one_and_half_at_the_half_point() -> None:
    assert sync.timing_component(0.0) == 1.0
    assert sync.timing_component(sync.TIMING_HALF_MS) == pytest.approx(0.5)


def test_sound_balance_when_one_has_twice_the_sound_then_half() -> None:
    loud, quiet = -20.0, -70.0
    reference = np.array([loud] * 20 + [quiet] * 20)
    take = np.array([loud] * 10 + [quiet] * 30)

    assert sync.sound_balance(reference, take, threshold_dbfs=-50) == 0.5


def test_combine_when_all_components_perfect_then_100_and_one_zero_sinks_it() -> None:
    assert sync.combine({"envelope": 1.0, "timing": 1.0, "sound_balance": 1.0}) == pytest.approx(
        100
    )
    assert sync.combine({"envelope": 0.0, "timing": 1.0, "sound_balance": 1.0}) < 1


def test_compare_when_take_is_reference_delayed_250_ms_then_offset_250_and_high_score() -> None:
    reference = tone_bursts(1)

    measures = sync.compare(reference, RATE, delayed(reference, 250), RATE)

    assert measures.offset_ms == pytest.approx(250, abs=20)
    assert measures.timing_deviation_ms < 10
    assert measures.sync_score >= 95


def test_compare_when_take_is_quieter_noisier_and_at_another_rate_then_still_in_sync() -> None:
    reference = tone_bursts(1, rate=RATE)
    take = delayed(tone_bursts(1, rate=44_100), 250, rate=44_100) * 0.2
    take += np.random.default_rng(5).normal(0, 0.002, take.size).astype(np.float32)

    measures = sync.compare(reference, RATE, take, 44_100)

    assert measures.offset_ms == pytest.approx(250, abs=20)
    assert measures.sync_score >= 85


@pytest.mark.parametrize(("seed_a", "seed_b"), [(1, 2), (1, 3), (2, 3)])
def test_compare_when_take_is_unrelated_then_low_score(seed_a: int, seed_b: int) -> None:
    measures = sync.compare(tone_bursts(seed_a), RATE, tone_bursts(seed_b), RATE)

    assert measures.sync_score < 40


def test_compare_when_take_is_silent_then_score_near_zero() -> None:
    measures = sync.compare(tone_bursts(1), RATE, silence(4.0), RATE)

    assert measures.components["sound_balance"] == 0.0
    assert measures.sync_score < 5


# --- speech (espeak-ng) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def line() -> tuple[np.ndarray, int]:
    return from_wav(espeak(LINE))


@needs_espeak
def test_compare_when_spoken_line_delayed_250_ms_then_offset_250_and_high_score(
    line: tuple[np.ndarray, int],
) -> None:
    samples, rate = line

    measures = sync.compare(samples, rate, delayed(samples, 250, rate=rate), rate)

    assert measures.offset_ms == pytest.approx(250, abs=20)
    assert measures.sync_score >= 90


@needs_espeak
def test_compare_when_same_line_in_another_voice_then_scores_far_above_another_line(
    line: tuple[np.ndarray, int],
) -> None:
    samples, rate = line
    other_voice, _ = from_wav(espeak(LINE, voice="en+f3"))
    other_line, _ = from_wav(espeak(OTHER_LINE))

    dubbed = sync.compare(samples, rate, delayed(other_voice, 250, rate=rate), rate)
    unrelated = sync.compare(samples, rate, other_line, rate)

    # Another voice speaks the line with its own small timing differences (so no exact
    # offset here), but the rhythm is the line's.
    assert dubbed.offset_ms == pytest.approx(250, abs=60)
    assert dubbed.sync_score >= 75
    assert unrelated.sync_score < 40
    assert dubbed.sync_score - unrelated.sync_score > 40


@needs_espeak
def test_compare_when_same_line_spoken_much_slower_then_timing_drifts_and_score_drops(
    line: tuple[np.ndarray, int],
) -> None:
    samples, rate = line
    slow, _ = from_wav(espeak(LINE, words_per_minute=130))

    measures = sync.compare(samples, rate, slow, rate)

    assert measures.timing_deviation_ms > 100
    assert measures.sync_score < 60
