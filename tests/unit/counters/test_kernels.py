"""Each Numba kernel agrees with its plain-Python twin (`kernel.py_func`) on random input,
and the replay kernels agree with a brute-force reading of the documented semantics."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from service.riskdata.counters import kernels as kn

SEEDS = (1, 2, 3)
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_granularity_for_matches_twin_and_leaves_at_least_20_buckets() -> None:
    for minutes in range(1, 180 * 24 * 60 + 1, 7):
        seconds = minutes * 60
        g = kn.granularity_for(seconds)
        assert g == kn.granularity_for.py_func(seconds)
        assert seconds % g == 0
        assert seconds // g >= kn.MIN_BUCKETS or g == kn.LADDER[0]


@pytest.mark.parametrize("seed", SEEDS)
def test_scalar_kernels_match_twins(seed: int) -> None:
    rng = _rng(seed)
    for _ in range(300):
        t = int(rng.integers(-(10**9), 4 * 10**9))
        g = int(rng.choice(kn.LADDER))
        n = int(rng.integers(1, 201))
        assert kn.bucket_of(t, g) == kn.bucket_of.py_func(t, g) == t // g
        end = t // g
        assert kn.window_first_bucket(end, n) == kn.window_first_bucket.py_func(end, n)
        assert kn.window_start_seconds(end, n, g) == kn.window_start_seconds.py_func(end, n, g)
        assert kn.ttl_seconds(n * g, g, 300) == kn.ttl_seconds.py_func(n * g, g, 300)
        last = int(rng.choice([kn.NOTHING, t - int(rng.integers(0, 400 * 86400))]))
        gap = int(rng.integers(0, 400 * 86400))
        run_gap = int(rng.choice([3600, 86400]))
        assert kn.idle_days(last, gap, t, run_gap) == kn.idle_days.py_func(last, gap, t, run_gap)


def test_window_start_is_within_one_bucket_of_t_minus_w() -> None:
    rng = _rng(7)
    for _ in range(500):
        t = T0 + int(rng.integers(0, 10**7))
        minutes = int(rng.integers(1, 180 * 24 * 60))
        w = minutes * 60
        g = kn.granularity_for(w)
        if w % g:
            continue
        start = kn.window_start_seconds(t // g, w // g, g)
        assert t - w < start <= t - w + g


@pytest.mark.parametrize("seed", SEEDS)
def test_window_sums_matches_twin(seed: int) -> None:
    rng = _rng(seed)
    buckets = rng.integers(1000, 1300, size=2000).astype(np.int64)
    values = rng.integers(0, 1000, size=2000).astype(np.int64)
    sizes = np.array([1, 6, 30, 60, 200, 400], dtype=np.int64)
    end = 1250
    got = kn.window_sums(buckets, values, end, sizes)
    assert np.array_equal(got, kn.window_sums.py_func(buckets, values, end, sizes))
    for size, total in zip(sizes, got, strict=True):
        assert total == values[(buckets > end - size) & (buckets <= end)].sum()


def _stream(seed: int, count: int, entities: int, spread: int, late: int) -> tuple[np.ndarray, ...]:
    """Random events: mostly forward in time, some up to `late` seconds out of order."""
    rng = _rng(seed)
    steps = rng.integers(0, spread, size=count)
    times = T0 + np.cumsum(steps)
    jitter = np.where(rng.random(count) < 0.2, rng.integers(0, late + 1, size=count), 0)
    times = (times - jitter).astype(np.int64)
    ents = rng.integers(0, entities, size=count).astype(np.int64)
    amounts = rng.integers(1, 500, size=count).astype(np.int64)
    updates = (rng.random(count) < 0.8).astype(np.int64)
    return times, ents, amounts, updates


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("granularity", "buckets"), [(60, 30), (3600, 24), (10, 6)])
def test_replay_windowed_matches_twin_and_semantics(seed: int, granularity: int, buckets: int) -> None:
    times, ents, amounts, updates = _stream(seed, 400, 5, granularity * buckets // 8, granularity * buckets // 2)
    got = kn.replay_windowed(times, ents, amounts, updates, granularity, buckets, 5)
    assert np.array_equal(got, kn.replay_windowed.py_func(times, ents, amounts, updates, granularity, buckets, 5))
    # Brute force: a window ends at the newest bucket its entity reached (or the event's own);
    # an update counts when, at its arrival, its bucket was inside the window then.
    head: dict[int, int] = {}
    kept: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for i in range(times.shape[0]):
        e, b = int(ents[i]), int(times[i]) // granularity
        end = max(head.get(e, b), b)
        if updates[i]:
            head[e] = end
            if b > end - buckets:
                kept[e].append((b, int(amounts[i])))
        expected = sum(a for bb, a in kept[e] if end - buckets < bb <= end)
        assert got[i] == expected, i


@pytest.mark.parametrize("seed", SEEDS)
def test_replay_all_time_matches_twin_and_never_goes_negative(seed: int) -> None:
    rng = _rng(seed)
    ents = rng.integers(0, 4, size=500).astype(np.int64)
    amounts = rng.integers(1, 4, size=500).astype(np.int64)
    signs = rng.choice(np.array([-1, 0, 1], dtype=np.int64), size=500, p=[0.4, 0.2, 0.4])
    got = kn.replay_all_time(ents, amounts, signs, 4)
    assert np.array_equal(got, kn.replay_all_time.py_func(ents, amounts, signs, 4))
    totals = [0, 0, 0, 0]
    for i in range(500):
        e = int(ents[i])
        totals[e] = max(0, totals[e] + int(signs[i]) * int(amounts[i]))
        assert got[i] == totals[e]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("granularity", "buckets"), [(60, 60), (3600, 24)])
def test_replay_distinct_matches_twin_and_semantics(seed: int, granularity: int, buckets: int) -> None:
    times, ents, _amounts, updates = _stream(seed, 400, 3, granularity * buckets // 10, granularity * buckets // 3)
    rng = _rng(seed + 100)
    members = np.asarray(rng.integers(0, 12, size=int(times.shape[0])), dtype=np.int64)
    pairs = ents * 12 + members
    got = kn.replay_distinct(times, ents, pairs, updates, granularity, buckets, 3, 36)
    twin = kn.replay_distinct.py_func(times, ents, pairs, updates, granularity, buckets, 3, 36)
    assert np.array_equal(got, twin)
    # Brute force: members whose newest occurrence (so far) lies in the window that ends at the
    # newest bucket of the entity, or the event's own if newer.
    head: dict[int, int] = {}
    newest: dict[tuple[int, int], int] = {}
    pair: tuple[int, int]
    for i in range(times.shape[0]):
        e, t = int(ents[i]), int(times[i])
        b = t // granularity
        end = max(head.get(e, b), b)
        if updates[i]:
            head[e] = end
            pair = (e, int(members[i]))
            newest[pair] = max(newest.get(pair, t), t)
        lo = (end - buckets + 1) * granularity
        expected = sum(1 for (ee, _), seen in newest.items() if ee == e and seen >= lo)
        assert got[i] == expected, i


@pytest.mark.parametrize("seed", SEEDS)
def test_replay_idle_matches_twin_and_semantics(seed: int) -> None:
    rng = _rng(seed)
    gaps = rng.choice(np.array([60, 3600, 30 * 86400, 200 * 86400], dtype=np.int64), size=300)
    times = (T0 + np.cumsum(gaps)).astype(np.int64)
    ents = rng.integers(0, 3, size=300).astype(np.int64)
    updates = (rng.random(300) < 0.7).astype(np.int64)
    got = kn.replay_idle(times, ents, updates, 86400, 3)
    assert np.array_equal(got, kn.replay_idle.py_func(times, ents, updates, 86400, 3))
    last: dict[int, int] = {}
    silence: dict[int, int] = {}
    for i in range(300):
        e, t = int(ents[i]), int(times[i])
        if updates[i]:
            if e in last and t - last[e] >= 86400:
                silence[e] = t - last[e]
            silence.setdefault(e, 0)
            last[e] = t
            expected = silence[e] // 86400
        elif e not in last:
            expected = 0
        elif t - last[e] >= 86400:
            expected = (t - last[e]) // 86400
        else:
            expected = silence[e] // 86400
        assert got[i] == expected, i


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("granularity", "buckets"), [(10, 6), (60, 30), (86400, 30)])
def test_the_replays_by_entity_give_every_step_the_same_value(seed: int, granularity: int, buckets: int) -> None:
    """replay_windowed_runs / replay_distinct_runs on the steps grouped by entity (a stable sort)
    equal replay_windowed / replay_distinct on the steps in replay order, and their twins agree."""
    rng = _rng(seed)
    count, entities, members = 800, 12, 9
    times = (T0 + np.cumsum(rng.integers(0, granularity * 3, count)) - rng.integers(0, granularity * 4, count)).astype(
        np.int64
    )
    ents = rng.integers(0, entities, count).astype(np.int64)
    amounts = rng.integers(1, 1000, count).astype(np.int64)
    updates = (rng.random(count) < 0.7).astype(np.int64)
    pairs = (ents * members + rng.integers(0, members, count)).astype(np.int64)
    order = np.argsort(ents, kind="stable")
    windowed = kn.replay_windowed(times, ents, amounts, updates, granularity, buckets, entities)
    distinct = kn.replay_distinct(times, ents, pairs, updates, granularity, buckets, entities, entities * members)
    for windowed_kernel in (kn.replay_windowed_runs, kn.replay_windowed_runs.py_func):
        grouped = np.empty(count, dtype=np.int64)
        steps = (times[order], ents[order], amounts[order], updates[order])
        grouped[order] = windowed_kernel(*steps, granularity, buckets)
        assert np.array_equal(grouped, windowed)
    for distinct_kernel in (kn.replay_distinct_runs, kn.replay_distinct_runs.py_func):
        grouped = np.empty(count, dtype=np.int64)
        grouped[order] = distinct_kernel(
            times[order], ents[order], pairs[order], updates[order], granularity, buckets, entities * members
        )
        assert np.array_equal(grouped, distinct)
