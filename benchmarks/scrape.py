"""What a Prometheus scrape costs with many children running, and whether scraping slows spawns down.

    .venv/bin/python benchmarks/scrape.py [--children 500] [--renders 60] [--spawns 150] [--json out.json]

With `--children` sandboxed `sleep` commands running (spread over 20 tool names, so 20 series per per-child
metric), it measures:
  1. render: collecting and formatting the whole page (generate_latest on serve_metrics' registry), the work
     each scrape does in the server's worker thread; its size in series and bytes;
  2. scrape round trip: GET /metrics from a separate process, as Prometheus sends it (OpenMetrics, gzip);
  3. event-loop lag: the worst delay of a 5 ms timer on the supervisor's loop, idle vs scraped back to back;
  4. spawn latency (Supervisor.start() to the command running, Child.spawn_latency_s) of /bin/true, in
     interleaved blocks: no scraper / a scraper every 1 s (Prometheus-like) / a scraper back to back (stress).
Prints medians and percentiles (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).absolute().parents[1]))

from prometheus_client import generate_latest

from exporters import serve_metrics
from policies import profiles
from supervisor import DEVNULL, Supervisor

ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

# A separate process, as Prometheus is: GET every `interval` seconds (0: back to back), one line per scrape.
SCRAPER = """
import sys, time, urllib.request
url, interval = sys.argv[1], float(sys.argv[2])
req = urllib.request.Request(url, headers={"Accept": sys.argv[3], "Accept-Encoding": "gzip"})
while True:
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=10) as r:
        n = len(r.read())
    dt = time.perf_counter() - t
    print(f"{dt:.6f} {n}", flush=True)
    if interval:
        time.sleep(max(0.0, interval - dt))
"""


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summary(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p90_ms": round(pct(ms, 90), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "max_ms": round(max(ms), 3),
    }


@contextmanager
def scraper(url: str, interval: float | None) -> Iterator[list[float]]:
    """Run the scraper process for the block (None: no scraper); collects its round-trip times."""
    times: list[float] = []
    if interval is None:
        yield times
        return
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRAPER, url, str(interval), ACCEPT],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield times
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        times += [float(line.split()[0]) for line in out.splitlines() if line.strip()]


async def loop_lag(seconds: float) -> float:
    """The worst lateness of a 5 ms timer on this event loop over `seconds`."""
    worst = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        await anyio.sleep(0.005)
        worst = max(worst, time.monotonic() - t - 0.005)
    return worst


async def main(n_children: int, renders: int, spawns: int) -> dict[str, object]:
    report: dict[str, object] = {"children": n_children, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as ws:
        policy = profiles.workspace_write(ws)
        async with (
            Supervisor(max_concurrency=n_children + 8) as sup,
            serve_metrics(sup, port=0) as server,
        ):
            t0 = time.monotonic()
            sleepers = []
            limiter = anyio.CapacityLimiter(16)

            async def start(i: int) -> None:
                async with limiter:
                    child = await sup.start(
                        ["/bin/sleep", "3600"],
                        policy=policy,
                        name=f"tool{i % 20:02d}",
                        stdout=DEVNULL,
                        stderr=DEVNULL,
                    )
                sleepers.append(child)

            async with anyio.create_task_group() as tg:
                for i in range(n_children):
                    tg.start_soon(start, i)
            for _ in range(600):  # until every child has been sampled at least once
                if all(c.last_stats is not None for c in sleepers):
                    break
                await anyio.sleep(0.1)
            report["start_children_s"] = round(time.monotonic() - t0, 2)
            print(f"{len(sleepers)} children running after {report['start_children_s']} s", file=sys.stderr)

            # 1. The render each scrape does (in the server's worker thread).
            page = generate_latest(server.registry)
            lines = [ln for ln in page.decode().splitlines() if ln and not ln.startswith("#")]
            report["page"] = {"series": len(lines), "bytes": len(page)}
            times = []
            for _ in range(renders):
                t = time.perf_counter()
                await anyio.to_thread.run_sync(generate_latest, server.registry)
                times.append(time.perf_counter() - t)
            report["render"] = summary(times)

            # 2 and 3. Round trips from another process; the loop's lag idle vs under back-to-back scrapes.
            report["loop_lag_idle_ms"] = round(await loop_lag(3.0) * 1000, 3)
            with scraper(server.url, 0.0) as rtt:
                report["loop_lag_scraped_back_to_back_ms"] = round(await loop_lag(3.0) * 1000, 3)
            report["scrape_round_trip_back_to_back"] = summary(rtt)

            # 4. Spawn latency with no scraper, a 1 s scraper and a back-to-back scraper, interleaved.
            arms: dict[str, float | None] = {
                "no scraping": None,
                "scraped every 1 s": 1.0,
                "back to back": 0.0,
            }
            latency: dict[str, list[float]] = {k: [] for k in arms}
            rtts: dict[str, list[float]] = {k: [] for k in arms}
            block = 25
            for _ in range(max(1, spawns // block)):
                for arm, interval in arms.items():
                    with scraper(server.url, interval) as rtt:
                        await anyio.sleep(1.2)  # at least one scrape lands in every 1 s block
                        for _ in range(block):
                            child = await sup.start(
                                ["/bin/true"], policy=policy, stdout=DEVNULL, stderr=DEVNULL
                            )
                            assert child.spawn_latency_s is not None
                            latency[arm].append(child.spawn_latency_s)
                            await child.wait()
                    rtts[arm] += rtt
            report["spawn_latency"] = {arm: summary(v) for arm, v in latency.items()}
            report["scrape_round_trip_during_spawns"] = {arm: summary(v) for arm, v in rtts.items() if v}
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--children", type=int, default=500)
    ap.add_argument("--renders", type=int, default=60)
    ap.add_argument("--spawns", type=int, default=150, help="per arm")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    result = anyio.run(main, args.children, args.renders, args.spawns)
    print(json.dumps(result, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
