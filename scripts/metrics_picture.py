"""Draw the generated project's dashboard from a real run (needs matplotlib and prometheus).

    bench/.venv/bin/python scripts/metrics_picture.py

Bakes the template, runs the service with two workers and metrics on, scrapes it with Debian's
Prometheus (``apt-get install prometheus``) every second, and puts it through a small story:
light load, heavier load, one worker killed with SIGKILL (replaced by the supervisor), then a
SIGTERM while clients are connected (the drain). Every panel of
``docs/servicekit-dashboard.json`` is then queried over the run with Prometheus's range API and
drawn with matplotlib (the bench venv has it) into the project's ``docs/metrics.png``, the
picture docs/metrics.md shows. Takes about 90 s. Not part of the suite: the suite checks the
same queries against a real Prometheus (tests/test_prometheus.py); this only draws them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).resolve().parent.parent
PROJECT = TEMPLATE / "{{cookiecutter.project_slug}}"
OUT = PROJECT / "docs" / "metrics.png"
RATE_WINDOW = "5s"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(what: str, check: Any, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"metrics_picture: no {what} within {limit:g}s")
        time.sleep(0.1)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


class Load:
    """Clients that ping-pong at a steady pace each, added and stopped from outside."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.clients = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def add(self, count: int, pace: float) -> None:
        for _ in range(count):
            asyncio.run_coroutine_threadsafe(self._client(self.clients, pace), self.loop)
            self.clients += 1

    async def _client(self, number: int, pace: float) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return  # the service has stopped
            try:
                for n in range(200):  # then it hangs up and comes back: closes to count
                    writer.write(b"client %d line %d\n" % (number, n))
                    reply = await reader.readline()
                    if not reply or reply.startswith(b"error:"):
                        break
                    await asyncio.sleep(pace)
            except OSError:
                pass
            writer.close()


def main() -> int:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        print("metrics_picture: needs the prometheus server (apt-get install prometheus)")
        return 1
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cookiecutter.main import cookiecutter

    work = Path(tempfile.mkdtemp(prefix="metrics-picture-"))
    project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(work)))
    metrics, api = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
    env.update(
        PYTHONPATH=str(project),
        APP_PORT="0",
        APP_WORKERS="2",
        APP_METRICS_PORT=str(metrics),
        APP_JOURNAL_PATH=str(work / "journal.log"),
    )
    service = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=project, env=env, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(service.stderr or []), daemon=True).start()
    wait("listening line", lambda: any("listening on" in line for line in lines))
    port = int(re.search(r"listening on \S+:(\d+)", "".join(lines))[1])  # type: ignore[index]
    config = work / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: service\n    static_configs: [{{targets: ['127.0.0.1:{metrics}']}}]\n"
    )
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{api}",
            "--log.level=warn",
        ],
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{api}/api/v1/"
    try:
        wait("Prometheus", lambda: _answers(f"http://127.0.0.1:{api}/-/ready"))
        began = time.time()
        load = Load(port)
        load.add(10, 0.02)
        time.sleep(20)
        load.add(30, 0.005)
        time.sleep(15)
        pid = int(re.findall(r"worker 1 ready \(pid (\d+)\)", "".join(lines))[-1])
        os.kill(pid, signal.SIGKILL)
        time.sleep(20)
        holder = socket.create_connection(("127.0.0.1", port))
        holder.sendall(b"held\n")
        holder.recv(100)
        service.send_signal(signal.SIGTERM)
        # It keeps talking, so the drain lasts a few scrapes (a connection that is ending has
        # at most LINGER_SECONDS, 2 s, to be done).
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            holder.sendall(b"x")
            time.sleep(0.05)
        holder.close()
        service.wait(30)
        time.sleep(3)
        ended = time.time()
        panels = json.loads((project / "docs" / "servicekit-dashboard.json").read_text())
        draw(plt, panels["panels"], base, began, ended)
    finally:
        server.terminate()
        server.wait(10)
        if service.poll() is None:
            service.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(f"metrics_picture: wrote {OUT}")
    return 0


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except OSError:
        return False
    return True


def draw(plt: Any, panels: list[dict[str, Any]], base: str, began: float, ended: float) -> None:
    columns = 3
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(15, 3.2 * rows))
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.set_title(panel["title"], fontsize=10)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        stats = []
        for target in panel["targets"]:
            expression = target["expr"].replace("$__rate_interval", RATE_WINDOW)
            query = urllib.parse.urlencode(
                {"query": expression, "start": began, "end": ended, "step": "1"}
            )
            answer = get_json(base + "query_range?" + query)
            for series in answer["data"]["result"]:
                label = re.sub(
                    r"\{\{(\w+)\}\}",
                    lambda m, s=series: s["metric"].get(m[1], ""),
                    target.get("legendFormat") or expression,
                )
                times = [float(t) - began for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                if panel["type"] == "stat":  # Grafana shows one number: the run's highest
                    stats.append(f"{label}: {max(values):g}{' s' if unit == 's' else ''}")
                else:
                    ax.plot(times, values, label=label, linewidth=1.2)
        if panel["type"] == "stat":
            ax.axis("off")
            ax.text(0.5, 0.5, "\n".join(stats), ha="center", va="center", fontsize=16)
            continue
        ax.set_xlabel("seconds into the run", fontsize=8)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=8)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    figure.suptitle(
        "servicekit dashboard drawn from a real Prometheus: 2 workers; 10, then 40 clients"
        " reconnecting every 200 requests;\nworker 1 killed at ~35 s; SIGTERM at ~55 s."
        " Stat panels: the run's highest value.",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(OUT, dpi=80)


if __name__ == "__main__":
    sys.exit(main())
