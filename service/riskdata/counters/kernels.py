"""Window arithmetic as Numba kernels: no I/O, shared by the online store, batches and replays.

Every kernel is `@njit(cache=True)` and keeps its plain-Python twin as
`kernel.py_func`; the unit tests run both on random input and require equal
results. The semantics they implement are stated in `service.riskdata.counters.loader`.

Online, the state lives in Redis, so `lua/observe.lua` performs the same
steps there (bucket = floor(t / g), ring slots, running totals, the window
ending at the newest bucket); the store uses `ttl_seconds` when it compiles
the counter file. Offline, `replay_*` run those steps over arrays of events
(backtests, re-deriving counters from the decision log). An integration test
feeds one random event stream, late events and reads included, to Redis and
to the replay kernels and requires the same value for every event.

Cost model (../shared/PERFORMANCE_NOTES.md): a call into a kernel costs
~200 ns and turning Redis replies into arrays ~10 us, so nothing here runs
per request on replies. The array kernels (`window_sums`, `replay_*`) pay
from about a thousand elements: batches and backtests over history.

Times are integer seconds since the Unix epoch (UTC); all arrays are int64.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Bucket granularities, seconds. Each divides every larger one, so a coarse
# bucket is always a whole number of fine ones.
LADDER = (10, 60, 300, 900, 3600, 21600, 86400)
# A window gets the largest granularity that still cuts it into this many
# buckets: the bucket error is then at most 1/20 of the window.
MIN_BUCKETS = 20
# Validation bounds occurred_at to [now - 24 h, now + max future skew]: an
# event may be that far ahead of the server's clock, which TTLs must absorb.
# The store takes the deployment's bound (settings.max_future_skew_seconds);
# this is its default, the settings' default.
DEFAULT_FUTURE_SKEW_SECONDS = 300
SECONDS_PER_DAY = 86400
# "No state yet" for heads and last-seen times; far below any real time.
NOTHING = -(2**62)


@njit(cache=True)
def granularity_for(window_seconds: int) -> int:
    """The bucket width of a window: the largest LADDER unit dividing it into >= MIN_BUCKETS buckets."""
    best = LADDER[0]
    for g in LADDER:
        if window_seconds % g == 0 and window_seconds // g >= MIN_BUCKETS:
            best = g
    return best


@njit(cache=True)
def bucket_of(t: int, granularity: int) -> int:
    """The bucket holding second `t` (floor division, so negative times work too)."""
    return t // granularity


@njit(cache=True)
def window_first_bucket(end_bucket: int, buckets: int) -> int:
    """The oldest bucket of the window of `buckets` buckets that ends with `end_bucket`."""
    return end_bucket - buckets + 1


@njit(cache=True)
def window_start_seconds(end_bucket: int, buckets: int, granularity: int) -> int:
    """The first second the window ending with `end_bucket` covers: events at or after it count."""
    return (end_bucket - buckets + 1) * granularity


@njit(cache=True)
def ttl_seconds(window_seconds: int, granularity: int, future_skew: int) -> int:
    """How long a key must outlive its last write so that no window still needs it.

    Data written in bucket h is read until event time (h + n) * g = h*g + W;
    the write happened at server time >= h*g - future_skew, and the bucket
    may have been written up to g later than its start: W + g + skew.
    """
    return window_seconds + granularity + future_skew


@njit(cache=True)
def window_sums(buckets: np.ndarray, values: np.ndarray, end_bucket: int, sizes: np.ndarray) -> np.ndarray:
    """Per window size, the sum of `values` whose bucket lies in the window ending with `end_bucket`."""
    out = np.zeros(sizes.shape[0], dtype=np.int64)
    for i in range(buckets.shape[0]):
        b = buckets[i]
        for w in range(sizes.shape[0]):
            if end_bucket - sizes[w] < b <= end_bucket:
                out[w] += values[i]
    return out


@njit(cache=True)
def idle_days(last: int, gap: int, t: int, run_gap: int) -> int:
    """A read of an idle_days counter at `t`: whole days of silence before the current run (or before t)."""
    if last == NOTHING:
        return 0
    if t - last >= run_gap:
        return (t - last) // SECONDS_PER_DAY
    return gap // SECONDS_PER_DAY


@njit(cache=True)
def replay_windowed(
    times: np.ndarray,
    entities: np.ndarray,
    amounts: np.ndarray,
    updates: np.ndarray,
    granularity: int,
    buckets: int,
    n_entities: int,
) -> np.ndarray:
    """count/sum over one sliding window, event by event, as the online store computes it.

    Event i at `times[i]` belongs to entity `entities[i]` (0 <= e < n_entities);
    when `updates[i]` is non-zero it adds `amounts[i]`, else it only reads.
    Returns the value each event would have been told. A window ends at the
    newest bucket its entity has seen (or the event's own, if newer); a late
    event still inside that window is added to its own bucket, one older than
    the whole window is dropped.
    """
    n = buckets
    heads = np.full(n_entities, NOTHING, dtype=np.int64)
    totals = np.zeros(n_entities, dtype=np.int64)
    ring = np.zeros((n_entities, n), dtype=np.int64)
    out = np.zeros(times.shape[0], dtype=np.int64)
    for i in range(times.shape[0]):
        e = entities[i]
        b = times[i] // granularity
        h = heads[e]
        if updates[i] != 0:
            a = amounts[i]
            if h == NOTHING or b - h >= n:
                ring[e, :] = 0
                totals[e] = 0
                heads[e] = b
                ring[e, b % n] = a
                totals[e] = a
            elif b > h:
                for j in range(h + 1, b + 1):
                    totals[e] -= ring[e, j % n]
                    ring[e, j % n] = 0
                heads[e] = b
                ring[e, b % n] = a
                totals[e] += a
            elif b > h - n:
                ring[e, b % n] += a
                totals[e] += a
            out[i] = totals[e]
        elif h == NOTHING or b - h >= n:
            out[i] = 0
        elif b > h:
            value = totals[e]
            for j in range(h + 1, b + 1):
                value -= ring[e, j % n]
            out[i] = value
        else:
            out[i] = totals[e]
    return out


@njit(cache=True)
def replay_all_time(entities: np.ndarray, amounts: np.ndarray, signs: np.ndarray, n_entities: int) -> np.ndarray:
    """An all-time count/sum: sign +1 adds the amount, -1 subtracts it (never below 0), 0 reads."""
    totals = np.zeros(n_entities, dtype=np.int64)
    out = np.zeros(entities.shape[0], dtype=np.int64)
    for i in range(entities.shape[0]):
        e = entities[i]
        if signs[i] > 0:
            totals[e] += amounts[i]
        elif signs[i] < 0:
            totals[e] = max(0, totals[e] - amounts[i])
        out[i] = totals[e]
    return out


@njit(cache=True)
def replay_distinct(
    times: np.ndarray,
    entities: np.ndarray,
    pairs: np.ndarray,
    updates: np.ndarray,
    granularity: int,
    buckets: int,
    n_entities: int,
    n_pairs: int,
) -> np.ndarray:
    """Exact distinct count over one sliding window, as the online store computes it below its cap.

    `pairs[i]` numbers the (entity, member) pair of event i densely
    (0 <= p < n_pairs). A member counts in a window when its newest
    occurrence falls in it; each bucket holds how many members were last seen
    in it, so the window value is again a running total over a ring.
    """
    n = buckets
    heads = np.full(n_entities, NOTHING, dtype=np.int64)
    totals = np.zeros(n_entities, dtype=np.int64)
    ring = np.zeros((n_entities, n), dtype=np.int64)
    last = np.full(n_pairs, NOTHING, dtype=np.int64)
    out = np.zeros(times.shape[0], dtype=np.int64)
    for i in range(times.shape[0]):
        e = entities[i]
        t = times[i]
        b = t // granularity
        h = heads[e]
        if updates[i] != 0:
            if h == NOTHING or b - h >= n:
                ring[e, :] = 0
                totals[e] = 0
                heads[e] = b
            elif b > h:
                for j in range(h + 1, b + 1):
                    totals[e] -= ring[e, j % n]
                    ring[e, j % n] = 0
                heads[e] = b
            h = heads[e]
            p = pairs[i]
            old = last[p]
            if old == NOTHING or old < t:
                if old != NOTHING:
                    ob = old // granularity
                    if h - n < ob <= h:
                        ring[e, ob % n] -= 1
                        totals[e] -= 1
                if h - n < b <= h:
                    ring[e, b % n] += 1
                    totals[e] += 1
                last[p] = t
            out[i] = totals[e]
        elif h == NOTHING or b - h >= n:
            out[i] = 0
        elif b > h:
            value = totals[e]
            for j in range(h + 1, b + 1):
                value -= ring[e, j % n]
            out[i] = value
        else:
            out[i] = totals[e]
    return out


@njit(cache=True)
def replay_idle(
    times: np.ndarray, entities: np.ndarray, updates: np.ndarray, run_gap: int, n_entities: int
) -> np.ndarray:
    """idle_days, event by event: whole days of silence before the entity's current run of activity.

    A run is a sequence of events each less than `run_gap` seconds after the
    previous one. An event older than the entity's newest changes nothing.
    """
    last = np.full(n_entities, NOTHING, dtype=np.int64)
    gaps = np.zeros(n_entities, dtype=np.int64)
    out = np.zeros(times.shape[0], dtype=np.int64)
    for i in range(times.shape[0]):
        e = entities[i]
        t = times[i]
        if updates[i] != 0:
            if last[e] == NOTHING:
                last[e] = t
                gaps[e] = 0
            elif t >= last[e]:
                if t - last[e] >= run_gap:
                    gaps[e] = t - last[e]
                last[e] = t
            out[i] = gaps[e] // SECONDS_PER_DAY
        else:
            out[i] = idle_days(last[e], gaps[e], t, run_gap)
    return out


# --- the same replays over steps grouped by entity -----------------------------------------
#
# `replay_windowed` and `replay_distinct` keep a ring of buckets per entity: n_entities x buckets
# int64s, 144 MB for 100,000 entities of a 180-day window, zeroed on every call. Entities never
# interact, so a caller may order the steps by entity (each entity's steps contiguous, in replay
# order within it: a stable sort) and use these, which keep one ring and reset it where the
# entity changes: memory O(buckets), and the ring stays in cache. Same values, step for step.


@njit(cache=True)
def replay_windowed_runs(
    times: np.ndarray, entities: np.ndarray, amounts: np.ndarray, updates: np.ndarray, granularity: int, buckets: int
) -> np.ndarray:
    """`replay_windowed` for steps grouped by entity (see above)."""
    n = buckets
    ring = np.zeros(n, dtype=np.int64)
    out = np.zeros(times.shape[0], dtype=np.int64)
    current = -1
    h = NOTHING
    total = 0
    for i in range(times.shape[0]):
        if entities[i] != current:
            current = entities[i]
            h = NOTHING
            total = 0
        b = times[i] // granularity
        if updates[i] != 0:
            a = amounts[i]
            if h == NOTHING or b - h >= n:
                ring[:] = 0
                h = b
                ring[b % n] = a
                total = a
            elif b > h:
                for j in range(h + 1, b + 1):
                    total -= ring[j % n]
                    ring[j % n] = 0
                h = b
                ring[b % n] = a
                total += a
            elif b > h - n:
                ring[b % n] += a
                total += a
            out[i] = total
        elif h == NOTHING or b - h >= n:
            out[i] = 0
        elif b > h:
            value = total
            for j in range(h + 1, b + 1):
                value -= ring[j % n]
            out[i] = value
        else:
            out[i] = total
    return out


@njit(cache=True)
def replay_distinct_runs(
    times: np.ndarray,
    entities: np.ndarray,
    pairs: np.ndarray,
    updates: np.ndarray,
    granularity: int,
    buckets: int,
    n_pairs: int,
) -> np.ndarray:
    """`replay_distinct` for steps grouped by entity (see above)."""
    n = buckets
    ring = np.zeros(n, dtype=np.int64)
    last = np.full(n_pairs, NOTHING, dtype=np.int64)
    out = np.zeros(times.shape[0], dtype=np.int64)
    current = -1
    h = NOTHING
    total = 0
    for i in range(times.shape[0]):
        if entities[i] != current:
            current = entities[i]
            h = NOTHING
            total = 0
        t = times[i]
        b = t // granularity
        if updates[i] != 0:
            if h == NOTHING or b - h >= n:
                ring[:] = 0
                total = 0
                h = b
            elif b > h:
                for j in range(h + 1, b + 1):
                    total -= ring[j % n]
                    ring[j % n] = 0
                h = b
            p = pairs[i]
            old = last[p]
            if old == NOTHING or old < t:
                if old != NOTHING:
                    ob = old // granularity
                    if h - n < ob <= h:
                        ring[ob % n] -= 1
                        total -= 1
                if h - n < b <= h:
                    ring[b % n] += 1
                    total += 1
                last[p] = t
            out[i] = total
        elif h == NOTHING or b - h >= n:
            out[i] = 0
        elif b > h:
            value = total
            for j in range(h + 1, b + 1):
                value -= ring[j % n]
            out[i] = value
        else:
            out[i] = total
    return out


@njit(cache=True)
def group_order(keys: np.ndarray, n: int) -> np.ndarray:
    """The positions of `keys` (each in [0, n)) grouped by key in increasing key order, in their
    own order within a group: `np.argsort(keys, kind="stable")` as a counting sort, in
    O(len(keys) + n) (replays group a counter's steps by entity with it)."""
    starts = np.zeros(n + 1, dtype=np.int64)
    for i in range(len(keys)):
        starts[keys[i] + 1] += 1
    for key in range(n):
        starts[key + 1] += starts[key]
    out = np.empty(len(keys), dtype=np.int64)
    for i in range(len(keys)):
        key = keys[i]
        out[starts[key]] = i
        starts[key] += 1
    return out
