"""The pipeline's targets, judged from a bench report: what each was measured at, and met or not.

A target the run did not measure (an engine left out, no latency run at that
share, no 10-minute run) is reported as such, with what would measure it,
never as met.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

AT_LEAST = (("bare", 0.8), ("quix", 2.5), ("faust", 10.0))  # pipeline events/s over the engine's
EXACTLY_ONCE_MAX_COST = 0.25  # of at-least-once's events/s
P99_UNDER_MS = ((0.5, 50.0), (0.8, 250.0))  # share of the maximum, p99 bound
FLAT_SECONDS = 600.0  # how long a latency run must last to judge the worker's memory
FLAT_WITHIN = 0.10  # the last third's median RSS over the middle third's, at most


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None  # None: not measured by this run


def judge(report: dict[str, Any]) -> list[Verdict]:
    engines = report["engines"]
    return [
        *(_faster(engines, peer, times) for peer, times in AT_LEAST),
        _exactly_once(engines),
        *(_p99(engines, report["latency"], share, bound) for share, bound in P99_UNDER_MS),
        _flat_memory(report["latency"]),
    ]


def median_rate(engines: dict[str, Any], engine: str) -> float | None:
    """The engine's median events/s in a report, None where it has none."""
    median = engines.get(engine, {}).get("median")
    return None if median is None else float(median["events_per_s"])


def _unsteady(engines: dict[str, Any], *names: str) -> str | None:
    """Why figures of these engines cannot judge a target: runs timed with a worker's start-up."""
    runs = [engines.get(name, {}).get("not_steady") for name in names]
    if not any(runs):
        return None
    events = max(r["events_for_steady"] for r in runs if r)
    return f"pipeline runs timed with the worker's start-up: --events {events:,} or more"


def _faster(engines: dict[str, Any], peer: str, times: float) -> Verdict:
    target = f"pipeline ≥ {times:g}x {_TITLES[peer]}"
    ours, theirs = median_rate(engines, "pipeline"), median_rate(engines, peer)
    if ours is None or theirs is None:
        return Verdict(target, f"not measured: --engines with pipeline and {peer}", None)
    ratio = ours / theirs
    said = f"{ratio:.2f}x ({ours:,.0f} against {theirs:,.0f} events/s)"
    if why := _unsteady(engines, "pipeline"):
        return Verdict(target, f"{said}; {why}", None)
    return Verdict(target, said, ratio >= times)


def _exactly_once(engines: dict[str, Any]) -> Verdict:
    target = f"exactly-once costs ≤ {EXACTLY_ONCE_MAX_COST:.0%} of at-least-once's events/s"
    eos, alo = median_rate(engines, "pipeline-eos"), median_rate(engines, "pipeline")
    if eos is None or alo is None:
        return Verdict(target, "not measured: --engines with pipeline and pipeline-eos", None)
    cost = 1.0 - eos / alo
    said = f"{eos:,.0f} against {alo:,.0f} events/s: " + (
        f"{cost:.0%} less" if cost > 0 else f"no cost ({-cost:.0%} more)"
    )
    if why := _unsteady(engines, "pipeline", "pipeline-eos"):
        return Verdict(target, f"{said}; {why}", None)
    return Verdict(target, said, cost <= EXACTLY_ONCE_MAX_COST)


def _p99(
    engines: dict[str, Any], latency: list[dict[str, Any]], share: float, bound: float
) -> Verdict:
    target = f"p99 < {bound:g} ms at {share:.0%} of the maximum"
    for row in latency:
        if math.isclose(row["share"], share) and row["p99_ms"] is not None:
            said = f"{row['p99_ms']:.0f} ms at {row['achieved_rate']:,.0f} events/s"
            if why := _unsteady(engines, "pipeline"):
                # The shares are of the pipeline's median: too low a maximum, too low a rate.
                return Verdict(target, f"{said}; {why}", None)
            return Verdict(target, said, row["p99_ms"] < bound)
    return Verdict(target, f"not measured: --latency with {share:g}", None)


def _flat_memory(latency: list[dict[str, Any]]) -> Verdict:
    target = f"worker RSS flat over {FLAT_SECONDS / 60:g} minutes"
    long = [row for row in latency if row["seconds"] >= FLAT_SECONDS and row["rss_mib"]]
    if not long:
        longest = max(latency, key=lambda row: row["seconds"], default=None)
        ran = (
            ""
            if longest is None
            else f"{longest['rss_start_mib']:.0f} → {longest['rss_end_mib']:.0f} MiB "
            f"over {longest['seconds']:g} s; "
        )
        return Verdict(target, f"{ran}not measured: --latency-seconds {FLAT_SECONDS:g}", None)
    said: list[str] = []
    met: bool | None = True
    for row in long:
        medians = _thirds(row["rss_mib"])
        if medians is None:  # the sampler stopped early: the worker was gone
            said.append(f"{row['share']:.0%}: {len(row['rss_mib'])} RSS samples, too few")
            met = None
            continue
        middle, last = medians
        change = last / middle - 1.0
        met = met if met is None else met and change <= FLAT_WITHIN
        said.append(
            f"{row['share']:.0%} over {row['seconds']:g} s: median {last:.0f} MiB in the last "
            f"third, {middle:.0f} in the middle ({change:+.0%}); "
            f"{row['rss_start_mib']:.0f} → {row['rss_end_mib']:.0f} MiB start to end"
        )
    return Verdict(target, "; ".join(said), met)


def _thirds(samples: list[list[float]]) -> tuple[float, float] | None:
    """Median RSS of a run's middle third and of its last third, from ``[t_s, mib]`` samples
    (None when a third has none).

    The first third is left out: the worker's caches and the embedded engine's
    first merges fill it. Medians, so that one burst does not decide.
    """
    span = samples[-1][0]
    middle = [mib for t, mib in samples if span / 3 <= t < 2 * span / 3]
    last = [mib for t, mib in samples if t >= 2 * span / 3]
    if not middle or not last:
        return None
    return float(statistics.median(middle)), float(statistics.median(last))


_TITLES = {"bare": "the bare loop", "quix": "Quix Streams", "faust": "the faust agent"}
