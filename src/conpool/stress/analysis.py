"""Where the requests' time went, and what the slowest ones have in common.

Pure functions over what :mod:`conpool.stress.runner` measured: one row per
request (:class:`~conpool.stress.measure.Requests`), the loop probe, the
garbage collections, the sampler's own runs and the connections' lifetimes.
Everything returned is JSON-ready and goes into the results as is.

A request's time, from asking the pool to having given the connection back,
is cut into parts that add up to it:

* ``wait``: parked for a free slot (the pool's ``acquire.granted`` duration);
* ``budget``: with a fleet budget, from the slot's grant (or the request's
  start) to the fleet's lease (``budget.granted``): the Redis round trip,
  and the wait while the fleet is at its limit;
* ``resolve``: resolving the name (``resolve.complete``);
* ``connect``: dialling, failed attempts and retry back-off included, TLS excluded;
* ``tls``: the TLS handshake (``tls.complete``);
* ``pool``: the pool's own work, the rest of the acquire and all of the release;
* ``wire``: the protocol exchange, less the loop lag below;
* ``lag``: the event loop running late: the time from a grant to the waiter
  running again (measured per request), plus the loop probe's lateness at
  the moment the answer was read (at most the exchange's time).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .measure import PROBE_INTERVAL, GCWatch, LoopProbe, Requests

__all__ = [
    "PARTS",
    "PART_LABELS",
    "balance_over_time",
    "breakdown",
    "lag_summary",
    "retirement_waves",
    "tail",
]

PARTS = ("wait", "budget", "resolve", "connect", "tls", "pool", "wire", "lag")
PART_LABELS = {
    "wait": "waiting for a slot",
    "budget": "waiting for the fleet budget",
    "resolve": "resolving",
    "connect": "connecting",
    "tls": "TLS handshake",
    "pool": "pool's own work",
    "wire": "exchange on the wire",
    "lag": "event-loop lag",
}

#: Pauses (collections, sampler runs) shorter than this are not counted as a request's cause.
PAUSE_NS = 1_000_000

#: How many of the slowest requests the tail analysis looks at (at most).
TAIL_SAMPLE = 50


def request_parts(req: Requests, probe: LoopProbe) -> dict[str, list[int]]:
    """Each request's parts, in ns; ``total`` is the measured request time."""
    lag_at = probe.lag_at()
    n = len(req)
    out: dict[str, list[int]] = {p: [0] * n for p in (*PARTS, "total")}
    start, got, xend, end = (req.column(c) for c in ("start", "got", "xend", "end"))
    wait, resume, resolve = req.column("wait"), req.column("resume"), req.column("resolve")
    dial, tls, budget = req.column("dial"), req.column("tls"), req.column("budget")
    for i in range(n):
        acquire = got[i] - start[i]
        w = min(wait[i], acquire)
        r = min(resume[i], acquire - w)
        b = min(budget[i], acquire - w - r)
        res = min(resolve[i], acquire - w - r - b)
        d = min(dial[i], acquire - w - r - b - res)
        t = min(tls[i], d)
        exchange = xend[i] - got[i]
        xlag = min(lag_at(xend[i]), exchange)
        out["wait"][i] = w
        out["budget"][i] = b
        out["resolve"][i] = res
        out["connect"][i] = d - t
        out["tls"][i] = t
        out["pool"][i] = (acquire - w - r - b - res - d) + (end[i] - xend[i])
        out["wire"][i] = exchange - xlag
        out["lag"][i] = r + xlag
        out["total"][i] = end[i] - start[i]
    return out


def _mean_ms(values: Sequence[int]) -> float:
    return math.fsum(values) / len(values) / 1e6 if values else 0.0


def breakdown(req: Requests, parts: dict[str, list[int]]) -> dict[str, Any]:
    """Mean of each part (ms) over all requests and per address, and how far
    the parts' sum is from the measured time (it is exact by construction:
    the check guards the arithmetic)."""
    n = len(req)
    overall = {p: round(_mean_ms(parts[p]), 5) for p in PARTS}
    total = _mean_ms(parts["total"])
    worst_gap = 0
    for i in range(n):
        gap = abs(sum(parts[p][i] for p in PARTS) - parts["total"][i])
        worst_gap = max(worst_gap, gap)
    by_address: dict[str, dict[str, Any]] = {}
    addr = req.column("addr")
    for index, ip in enumerate(req.addresses):
        rows = [i for i in range(n) if addr[i] == index]
        if not rows:
            continue
        by_address[ip] = {
            "requests": len(rows),
            "total": round(_mean_ms([parts["total"][i] for i in rows]), 5),
            **{p: round(_mean_ms([parts[p][i] for i in rows]), 5) for p in PARTS},
        }
    return {
        "requests": n,
        "mean_ms": overall,
        "total_ms": round(total, 5),
        "max_gap_ns": worst_gap,
        "by_address": dict(sorted(by_address.items())),
    }


def spike_causes(
    probe: LoopProbe, gcw: GCWatch, sampler: Sequence[tuple[int, int]], threshold: int
) -> list[tuple[int, int, str]]:
    """Each probe measurement ``threshold`` ns late or more, as (from, to, cause):
    the stretch of the probe's sleep and what held the loop most in it."""
    runqueue = probe.runqueue
    gc_iv = sorted(zip(gcw.start, gcw.duration, gcw.generation, strict=True))
    interval_ns = int(PROBE_INTERVAL * 1e9)
    out = []
    for i in range(len(probe.at)):
        lateness = probe.late[i]
        if lateness < threshold:
            continue
        woke = probe.at[i]
        cpu_wait = runqueue[i] if i < len(runqueue) else 0
        # The probe slept from woke - lateness - interval; whatever held the
        # loop in that stretch delayed it.  The biggest contributor names it.
        lo = woke - lateness - interval_ns
        held: Counter[str] = Counter()
        for s, d, g in gc_iv:
            if s >= woke:
                break
            overlap = min(s + d, woke) - max(s, lo)
            if overlap > 0:
                held[f"a garbage collection (generation {g})"] += overlap
        for s, d in sampler:
            overlap = min(s + d, woke) - max(s, lo)
            if overlap > 0:
                held["the stress tool's own sampler"] += overlap
        if cpu_wait:
            held["the machine: the loop's thread was waiting for a CPU"] = cpu_wait
        top = held.most_common(1)
        if top and top[0][1] >= lateness // 4:
            out.append((woke - lateness, woke, top[0][0]))
        else:
            out.append((woke - lateness, woke, "the loop's other work (its tasks and callbacks)"))
    return out


def lag_summary(
    probe: LoopProbe, gcw: GCWatch, sampler: Sequence[tuple[int, int]]
) -> dict[str, Any]:
    """The probe's lateness, its spikes, and what the spikes coincided with."""
    late = sorted(probe.late)
    n = len(late)
    if n == 0:
        return {"probes": 0}

    def pct(p: float) -> float:
        return late[max(0, math.ceil(p / 100 * n) - 1)] / 1e6

    median_ns = late[max(0, math.ceil(n / 2) - 1)]
    threshold = max(2_000_000, 3 * median_ns)
    spikes = spike_causes(probe, gcw, sampler, threshold)
    causes: Counter[str] = Counter(cause for _lo, _hi, cause in spikes)
    gc_iv = sorted(zip(gcw.start, gcw.duration, gcw.generation, strict=True))
    gc_by_gen: dict[str, dict[str, float]] = {}
    for gen in (0, 1, 2):
        ds = [d for _s, d, g in gc_iv if g == gen]
        if ds:
            gc_by_gen[str(gen)] = {
                "count": len(ds),
                "total_ms": round(sum(ds) / 1e6, 3),
                "max_ms": round(max(ds) / 1e6, 3),
            }
    sampler_total = sum(d for _s, d in sampler)
    return {
        "probes": n,
        "interval_ms": PROBE_INTERVAL * 1000,
        "p50_ms": round(pct(50), 4),
        "p90_ms": round(pct(90), 4),
        "p99_ms": round(pct(99), 4),
        "max_ms": round(late[-1] / 1e6, 4),
        "spike_threshold_ms": round(threshold / 1e6, 3),
        "spikes": len(spikes),
        "spike_causes": dict(causes.most_common()),
        "gc": gc_by_gen,
        "sampler_runs": len(sampler),
        "sampler_total_ms": round(sampler_total / 1e6, 3),
        "sampler_max_ms": round(max((d for _s, d in sampler), default=0) / 1e6, 3),
        "series_t_s": [round(t / 1e9, 4) for t in probe.at],
        "series_ms": [round(v / 1e6, 3) for v in probe.late],
    }


def _overlaps(starts: Sequence[int], ends: Sequence[int], lo: int, hi: int) -> bool:
    """Whether any interval [starts[i], ends[i]] (sorted by start) meets [lo, hi]."""
    i = bisect.bisect_right(starts, hi)
    # Intervals are short; look back a few.
    for j in range(i - 1, max(-1, i - 8), -1):
        if ends[j] >= lo:
            return True
    return False


def tail(
    req: Requests,
    parts: dict[str, list[int]],
    probe: LoopProbe,
    gcw: GCWatch,
    sampler: Sequence[tuple[int, int]],
    waves: Sequence[dict[str, Any]],
    lag: dict[str, Any],
) -> dict[str, Any]:
    """The slowest requests, what each went through, and what they share
    more often than the requests as a whole."""
    n = len(req)
    if n == 0:
        return {"sample": 0, "factors": [], "requests": []}
    total = parts["total"]
    k = min(TAIL_SAMPLE, max(1, n // 100))
    order = sorted(range(n), key=lambda i: total[i], reverse=True)
    slow = order[:k]
    threshold_ns = int(lag.get("spike_threshold_ms", 2.0) * 1e6)
    spikes = spike_causes(probe, gcw, sampler, threshold_ns)
    spike_kinds: dict[str, tuple[list[int], list[int]]] = {}
    for lo, hi, cause in sorted(spikes):
        starts, ends = spike_kinds.setdefault(cause, ([], []))
        starts.append(lo)
        ends.append(hi)
    # Only pauses long enough to matter to a request (1 ms or more).
    gc_pairs = sorted(
        (s, s + d, g)
        for s, d, g in zip(gcw.start, gcw.duration, gcw.generation, strict=True)
        if d >= PAUSE_NS
    )
    gc_full = [(s, e) for s, e, g in gc_pairs if g == 2]
    gc_young = [(s, e) for s, e, g in gc_pairs if g < 2]
    samp = sorted((s, s + d) for s, d in sampler if d >= PAUSE_NS)
    wave_iv = sorted((int(w["start_s"] * 1e9), int(w["end_s"] * 1e9) + 20_000_000) for w in waves)

    def iv(pairs: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
        return [a for a, _ in pairs], [b for _, b in pairs]

    gcf, gcy, smp, wav = iv(gc_full), iv(gc_young), iv(samp), iv(wave_iv)
    start, end = req.column("start"), req.column("end")
    addr, failures, dial = req.column("addr"), req.column("failures"), req.column("dial")

    def flags(i: int) -> list[str]:
        out = []
        t = total[i]
        if parts["wait"][i] >= t * 0.25 and parts["wait"][i] > 0:
            out.append("waited for a slot")
        if dial[i] > 0:
            out.append("dialled a new connection")
        if failures[i] > 0:
            out.append("had a failed connect attempt")
        for cause, (starts, ends) in spike_kinds.items():
            if _overlaps(starts, ends, start[i], end[i]):
                out.append(f"met an event-loop lag spike caused by {cause}")
        if gc_full and _overlaps(*gcf, start[i], end[i]):
            out.append("overlapped a full garbage collection (generation 2) of 1 ms or more")
        if gc_young and _overlaps(*gcy, start[i], end[i]):
            out.append("overlapped a young garbage collection (generation 0/1) of 1 ms or more")
        if samp and _overlaps(*smp, start[i], end[i]):
            out.append("overlapped a run of the stress tool's sampler of 1 ms or more")
        if wave_iv and _overlaps(*wav, start[i], end[i]):
            out.append("ran during a connection retirement wave")
        return out

    all_flags = [flags(i) for i in range(n)]
    count_all: Counter[str] = Counter(f for fl in all_flags for f in fl)
    count_slow: Counter[str] = Counter(f for i in slow for f in all_flags[i])
    addr_all = Counter(addr[i] for i in range(n))
    addr_slow = Counter(addr[i] for i in slow)
    for index, c in addr_slow.items():
        count_slow[f"used address {req.addresses[index]}"] = c
        count_all[f"used address {req.addresses[index]}"] = addr_all[index]
    factors: list[dict[str, Any]] = []
    for name, c in count_slow.most_common():
        share_slow = c / k
        share_all = count_all[name] / n
        factors.append(
            {
                "factor": name,
                "slow": c,
                "slow_share": round(share_slow, 4),
                "all_share": round(share_all, 4),
                "lift": round(share_slow / share_all, 2) if share_all else None,
                "common": share_slow >= 0.5 and (share_all == 0 or share_slow >= 1.5 * share_all),
            }
        )
    factors.sort(key=lambda f: (not f["common"], -f["slow_share"]))
    slow_means = {p: round(_mean_ms([parts[p][i] for i in slow]), 5) for p in PARTS}
    all_means = {p: round(_mean_ms(parts[p]), 5) for p in PARTS}
    biggest = max(PARTS, key=lambda p: slow_means[p] - all_means[p])
    conn = req.column("conn")
    samples = [
        {
            "t_s": round(start[i] / 1e9, 5),
            "total_ms": round(total[i] / 1e6, 4),
            "address": req.addresses[addr[i]],
            "conn_id": conn[i],
            "parts_ms": {p: round(parts[p][i] / 1e6, 4) for p in PARTS},
            "flags": all_flags[i],
        }
        for i in slow[:TAIL_SAMPLE]
    ]
    return {
        "sample": k,
        "threshold_ms": round(total[slow[-1]] / 1e6, 4),
        "factors": factors,
        "slow_mean_ms": slow_means,
        "all_mean_ms": all_means,
        "biggest_part": biggest,
        "requests": samples,
    }


def retirement_waves(
    lifetimes: Sequence[Sequence[Any]], window_s: float = 0.02, min_size: int = 4
) -> list[dict[str, Any]]:
    """Bursts of connections closed for the same expiry reason within ``window_s``:
    connections opened together that expire together."""
    by_reason: dict[str, list[float]] = {}
    for lt in lifetimes:
        if lt[3] is not None and lt[4] in ("uses", "lifetime", "idle"):
            by_reason.setdefault(lt[4], []).append(lt[3])
    waves: list[dict[str, Any]] = []
    for reason, ends in by_reason.items():
        ends.sort()
        i = 0
        while i < len(ends):
            j = i
            while j + 1 < len(ends) and ends[j + 1] - ends[i] <= window_s:
                j += 1
            if j - i + 1 >= min_size:
                waves.append(
                    {
                        "reason": reason,
                        "start_s": round(ends[i], 5),
                        "end_s": round(ends[j], 5),
                        "size": j - i + 1,
                    }
                )
                i = j + 1
            else:
                i += 1
    waves.sort(key=lambda w: w["start_s"])
    return waves


def balance_over_time(req: Requests, buckets: int = 10) -> dict[str, Any]:
    """Requests per address in ``buckets`` equal slices of the run, and each
    slice's imbalance (the busiest address's count over the least busy one's;
    None for a slice with fewer than 20 requests, too few to say)."""
    n = len(req)
    if n == 0 or not req.addresses:
        return {"t_s": [], "imbalance": [], "counts": {}}
    end, addr = req.column("end"), req.column("addr")
    last = max(end)
    width = max(last / buckets, 1)
    counts = [[0] * buckets for _ in req.addresses]
    for i in range(n):
        b = min(int(end[i] / width), buckets - 1)
        counts[addr[i]][b] += 1
    imbalance = []
    for b in range(buckets):
        column = [counts[a][b] for a in range(len(req.addresses))]
        imbalance.append(round(max(column) / max(min(column), 1), 3) if sum(column) >= 20 else None)
    return {
        "t_s": [round((b + 1) * width / 1e9, 4) for b in range(buckets)],
        "imbalance": imbalance,
        "counts": {ip: counts[a] for a, ip in enumerate(req.addresses)},
    }
