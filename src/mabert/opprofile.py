"""Where the time goes inside an ONNX Runtime session: milliseconds per run by operator type, from ORT's own
profiler (the session options of `mabert.export.ort_session`, as everywhere)."""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path


def op_type_times(onnx_path: str | Path, feed: dict, threads: int = 2, runs: int = 5) -> dict[str, float]:
    """Mean milliseconds per run spent in each op type (kernel time; one warm-up run is not counted),
    largest first."""
    from .export import ort_session

    with tempfile.TemporaryDirectory() as tmp:
        session = ort_session(onnx_path, threads, profile_prefix=os.path.join(tmp, "ort"))
        feed = {k: v for k, v in feed.items() if k in {i.name for i in session.get_inputs()}}
        for _ in range(runs + 1):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    run_starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    first_counted = run_starts[1] if len(run_starts) > 1 else 0
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time") and event["ts"] >= first_counted:
            totals[event["args"]["op_name"]] += event["dur"] / 1e3 / runs
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def format_op_times(name: str, times: dict[str, float], top: int = 8) -> str:
    total = sum(times.values()) or 1.0
    parts = [f"{op} {ms:.1f} ms ({100 * ms / total:.0f} %)" for op, ms in list(times.items())[:top]]
    return f"{name}: {total:.1f} ms in kernels — " + ", ".join(parts)
