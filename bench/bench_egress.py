"""Benchmark: what the browsers' egress guard costs. The same page loads in real Chromium
(the shard's flags) with every connection through the guard's proxy (shard/egress.py) and
straight, side by side in one run, alternating, each in a fresh browser context.

The page is the stand-in site's (tests/fakesite), to its QR code: the HTML, then its script's
API calls (login start, polls), so several requests per load; and the probe page of the egress
tests, which opens a fetch, an image and a WebSocket per URL. All on loopback, stopped on exit.

Run:  .venv/bin/python bench/bench_egress.py [--loads 40]
Prints markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from playwright.async_api import Browser, async_playwright  # noqa: E402
from shard.browser import CHROMIUM_ARGS  # noqa: E402
from shard.egress import Guard, Policy  # noqa: E402
from shard.settings import DEBIAN_CHROMIUM  # noqa: E402
from support.procs import free_port, port_open, start, stop, wait_for  # noqa: E402


async def load(browser: Browser, url: str, selector: str) -> float:
    context = await browser.new_context()
    try:
        page = await context.new_page()
        began = time.perf_counter()
        await page.goto(url, wait_until="domcontentloaded")
        await page.locator(selector).first.wait_for(timeout=30_000)
        return time.perf_counter() - began
    finally:
        await context.close()


async def main_async(loads: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-egress-"))
    port = free_port()
    site = start(
        [sys.executable, "-m", "fakesite", "--port", str(port)],
        folder / "fakesite.log",
        {"PYTHONPATH": str(ROOT / "tests")},
    )
    url = f"http://127.0.0.1:{port}"
    guard = Guard(Policy.of("", url))
    times: dict[tuple[str, str], list[float]] = {}
    try:
        wait_for(lambda: port_open(port), 15, "the stand-in site")
        await guard.start()
        async with async_playwright() as pw:
            flags = list(CHROMIUM_ARGS)
            guarded = await pw.chromium.launch(
                executable_path=DEBIAN_CHROMIUM, args=flags, proxy={"server": guard.address}
            )
            direct = await pw.chromium.launch(executable_path=DEBIAN_CHROMIUM, args=flags)
            pages = {"QR page": (f"{url}/", "div[data-ref]")}
            pages["probe page"] = (f"{url}/probe?urls={url}/api/state", "#probe")
            for browser in (guarded, direct):  # warm up both
                await load(browser, *pages["QR page"])
            for n in range(loads):
                for page, target in pages.items():
                    order = [("guarded", guarded), ("direct", direct)]
                    for name, browser in order if n % 2 else order[::-1]:
                        times.setdefault((page, name), []).append(await load(browser, *target))
            await guarded.close()
            await direct.close()
    finally:
        await guard.stop()
        stop(site)
    report(loads, times)


def report(loads: int, times: dict[tuple[str, str], list[float]]) -> None:
    print(f"command: `.venv/bin/python bench/bench_egress.py --loads {loads}`  ")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ")
    print(f"machine: {platform.machine()}, Python {platform.python_version()}\n")
    print("| load in a fresh context, median of", loads, "| through the guard | direct | ratio |")
    print("|---|---|---|---|")
    for page in ("QR page", "probe page"):
        guarded = statistics.median(times[(page, "guarded")]) * 1000
        direct = statistics.median(times[(page, "direct")]) * 1000
        print(f"| {page} | {guarded:.0f} ms | {direct:.0f} ms | {guarded / direct:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=40)
    asyncio.run(main_async(parser.parse_args().loads))


if __name__ == "__main__":
    main()
