"""The proxy-overhead benchmark's load generator: ``wrk`` when installed, else a Python asyncio client.

The Python client runs in its own process: ``python -m benchmarks.proxy_overhead loadgen SPEC``
(``_loadgen_main``) prints one ``LOADGEN {json}`` line, the same shape as the ``wrk`` script's.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.proxy_report import percentile
from benchmarks.proxy_services import CHAT_PATH, REPO, Target, _pinned, quiesce

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  -- the latency histogram as [microseconds, count] pairs, so that runs can be merged
  local hist = {{}}
  if {want_hist} then
    for i = 1, #latency do
      local v, c = latency(i)
      hist[#hist + 1] = string.format("[%d,%d]", v, c)
    end
  end
  io.write(string.format(
    'LOADGEN {{"requests":%d,"duration_s":%.6f,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,' ..
    '"errors":{{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}},"hist":[',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
  io.write(table.concat(hist, ","), "]}}\\n")
end
"""


@dataclass
class LoadGen:
    kind: str  # "wrk" or "python"
    cpus: set[int] | None
    work_dir: Path
    version: str = ""
    sent: dict[str, int] = field(default_factory=dict)  # completed requests per service

    @classmethod
    def pick(cls, choice: str, cpus: set[int] | None, work_dir: Path) -> LoadGen:
        wrk = shutil.which("wrk")
        if choice == "wrk" and not wrk:
            raise SystemExit("wrk is not installed (Debian: apt-get install -y wrk); or use --loadgen python")
        if choice in ("wrk", "auto") and wrk:
            out = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout
            return cls("wrk", cpus, work_dir, out.split("Copyright")[0].strip())
        return cls("python", cpus, work_dir, f"asyncio client, Python {platform.python_version()}")

    def warm_up(self, target: Target, stream: bool, concurrency: int, min_requests: int, min_s: float) -> dict[str, Any]:
        """Run until ``min_requests`` have completed (a proxy's first requests can be slow), at most 20 s."""
        total, start = 0, time.monotonic()
        while True:
            last = self.run(target, stream, concurrency, min_s)
            total += last["requests"]
            if total >= min_requests or time.monotonic() - start > 20:
                return {**last, "warmup_requests": total}

    def run(self, target: Target, stream: bool, concurrency: int, duration_s: float,
            histogram: bool = False) -> dict[str, Any]:
        """One timed run (whole seconds with wrk); ``histogram`` adds the latencies as [µs, count] pairs."""
        quiesce(target.service)
        body = target.body(stream)
        headers = {"Content-Type": "application/json", **target.headers}
        url = target.base + CHAT_PATH
        if self.kind == "wrk":
            script = self.work_dir / f"wrk-{target.key}-{'s' if stream else 'n'}{'-h' if histogram else ''}.lua"
            lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
            script.write_text(WRK_SCRIPT.format(body=body.decode(), headers=lines,
                                                want_hist="true" if histogram else "false"))
            argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, math.ceil(duration_s))}s", "--timeout", "10s",
                    "-s", str(script), url]
        else:
            spec = {"url": url, "headers": headers, "body": body.decode(), "concurrency": concurrency,
                    "duration_s": duration_s, "histogram": histogram}
            argv = [sys.executable, "-m", "benchmarks.proxy_overhead", "loadgen", json.dumps(spec)]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=duration_s + 60,
                              preexec_fn=_pinned(self.cpus))
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("LOADGEN ")), None)
        if proc.returncode != 0 or line is None:
            problem = f"load generator failed on {target.label} ({url}), exit {proc.returncode}: " \
                      f"{proc.stdout[-500:]} {proc.stderr[-500:]}"
            if target.service is not None and not target.service.alive():
                problem += f"\n{target.service.name} exited with code {target.service.proc.returncode}; " \
                           f"its log ends with:\n{target.service.log_tail()}"
            raise RuntimeError(problem)
        raw = json.loads(line[len("LOADGEN "):])
        if target.service is not None:
            self.sent[target.service.name] = self.sent.get(target.service.name, 0) + raw["requests"]
        errors = sum(raw["errors"].values())
        attempts = raw["requests"] + raw["errors"]["connect"] + raw["errors"]["timeout"]
        return {
            "concurrency": concurrency,
            "requests": raw["requests"],
            "duration_s": round(raw["duration_s"], 3),
            "rps": raw["requests"] / raw["duration_s"] if raw["duration_s"] else 0.0,
            "error_rate": errors / attempts if attempts else 1.0,
            "errors": raw["errors"],
            "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000,
            "mean_ms": raw["mean_us"] / 1000,
            "hist": raw["hist"],
        }


def _loadgen_main(spec_json: str) -> None:
    """The Python load generator: closed loop, keep-alive HTTP/1.1, one process, one event loop."""
    import asyncio
    from urllib.parse import urlsplit

    spec = json.loads(spec_json)
    url = urlsplit(spec["url"])
    body = spec["body"].encode()
    head = [f"POST {url.path} HTTP/1.1", f"Host: {url.netloc}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in spec["headers"].items()]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    latencies: list[int] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}

    async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("closed")
        status = int(status_line.split()[1])
        length, chunked, close = None, False, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                close = True
        if chunked:
            while True:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b""):
                        pass
                    break
                await reader.readexactly(size + 2)
        elif length is not None:
            await reader.readexactly(length)
        else:
            await reader.read()
            close = True
        return status, close

    async def worker(deadline: float) -> None:
        reader = writer = None
        while time.monotonic() < deadline:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(url.hostname, url.port)
                except OSError:
                    errors["connect"] += 1
                    await asyncio.sleep(0.05)
                    continue
            t0 = time.perf_counter_ns()
            try:
                writer.write(request)
                status, close = await asyncio.wait_for(read_response(reader), 10)
            except TimeoutError:
                errors["timeout"] += 1
                close = True
            except (OSError, ConnectionError, ValueError, asyncio.IncompleteReadError):
                errors["read"] += 1
                close = True
            else:
                latencies.append(time.perf_counter_ns() - t0)
                if status >= 400:
                    errors["status"] += 1
            if close:
                writer.close()
                reader = writer = None

    async def main() -> float:
        start = time.monotonic()
        await asyncio.gather(*(worker(start + spec["duration_s"]) for _ in range(spec["concurrency"])))
        return time.monotonic() - start

    with contextlib.suppress(ImportError):
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    duration = asyncio.run(main())
    counts: dict[int, int] = {}
    for ns in latencies:
        counts[ns // 1000] = counts.get(ns // 1000, 0) + 1
    hist = sorted(counts.items())
    out = {"requests": len(latencies), "duration_s": duration, "p50_us": percentile(hist, 50),
           "p99_us": percentile(hist, 99), "mean_us": sum(latencies) / max(1, len(latencies)) / 1000,
           "errors": errors, "hist": hist if spec.get("histogram") else []}
    print("LOADGEN " + json.dumps(out), flush=True)
