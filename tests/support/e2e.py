"""Recording the scenario's phase timings (printed, and kept in test-artifacts/)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from support.scenario import Report


def record_timings(artifacts: Path, mode: str, report: Report) -> None:
    data = {
        "mode": mode,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()}",
        "timings_s": {k: round(v, 1) for k, v in report.timings.items()},
        "max_sessions_seen_on_one_shard": report.max_seen,
        "peak_ready_shards": report.peak_shards,
        "responses_checked_against_registry": report.checked,
        "misrouted": len(report.misrouted),
    }
    (artifacts / f"e2e-{mode}.json").write_text(json.dumps(data, indent=2))
    print(f"\n== end-to-end ({mode}) ==\n{json.dumps(data, indent=2)}")
