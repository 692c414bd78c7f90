"""Benchmark of torpor dockerd: the docker CLI through it against torpor's own CLI.

    .venv/bin/python benchmarks/bench_docker_api.py [--quick] [-n N]

Side by side, on one TORPOR_HOME (checkpoints in its snapshot store), each command run
as a user runs it (a new process each time, timed from start to exit):
  run -d            docker run -d torpor/base          | torpor run -d base
  exec              docker exec C true                 | torpor exec C true
  checkpoint create docker checkpoint create C cpN     | torpor checkpoint create C cpN
                    (a small Python process in memory; the container stops)
  start from it     docker start --checkpoint cpN C    | torpor start --checkpoint cpN C
Medians and 95th percentiles. The docker CLI is a Go binary that talks to a running
daemon; torpor's CLI is a Python process that opens the engine itself, so the
difference is mostly the CLI's own start-up, not the sandbox's work.

Writes benchmarks/results/docker_api.json and benchmarks/results/docker_api.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.dockerd.conftest import DOCKER, TORPOR, start_dockerd, stop_dockerd  # noqa: E402
from torpor.sandbox import images as image_mod  # noqa: E402
from torpor.sandbox.images import BASE_IMAGE, ImageStore  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COUNTER = "import time\nn = 0\nwhile True:\n    n += 1\n    time.sleep(0.05)\n"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


class Clis:
    def __init__(self, docker_env: dict[str, str], torpor_env: dict[str, str]) -> None:
        self.docker_env = docker_env
        self.torpor_env = torpor_env

    def docker(self, *args: str) -> tuple[float, str]:
        return self._run([DOCKER, *args], self.docker_env)

    def torpor(self, *args: str) -> tuple[float, str]:
        return self._run([TORPOR, *args], self.torpor_env)

    @staticmethod
    def _run(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        ms = (time.perf_counter() - t0) * 1000
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:4])} failed: {proc.stderr.strip()[-300:]}")
        return ms, proc.stdout.strip()


def measure(n: int, step: Callable[[int], float]) -> list[float]:
    return [step(i) for i in range(n)]


def bench(clis: Clis, n: int) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    out["ps (the CLI's start-up and a listing)"] = {
        "docker": measure(n, lambda i: clis.docker("ps")[0]),
        "torpor": measure(n, lambda i: clis.torpor("ps")[0]),
    }

    def run_d(kind: str) -> Callable[[int], float]:
        def step(i: int) -> float:
            if kind == "docker":
                ms, _ = clis.docker("run", "-d", "--name", f"bd-{i}", "torpor/base")
                clis.docker("rm", "-f", f"bd-{i}")
            else:
                ms, _ = clis.torpor("run", "-d", "--name", f"bt-{i}", "base")
                clis.torpor("rm", "-f", f"bt-{i}")
            return ms
        return step

    out["run -d"] = {k: measure(n, run_d(k)) for k in ("docker", "torpor")}

    clis.docker("run", "-d", "--name", "bd-x", "torpor/base", "python3", "-c", COUNTER)
    clis.torpor("run", "-d", "--name", "bt-x", "base", "python3", "-c", COUNTER)
    out["exec (true)"] = {
        "docker": measure(n, lambda i: clis.docker("exec", "bd-x", "true")[0]),
        "torpor": measure(n, lambda i: clis.torpor("exec", "bt-x", "true")[0]),
    }
    ck: dict[str, list[float]] = {"docker": [], "torpor": []}
    st: dict[str, list[float]] = {"docker": [], "torpor": []}
    for i in range(n):
        ck["docker"].append(clis.docker("checkpoint", "create", "bd-x", f"cp{i}")[0])
        st["docker"].append(clis.docker("start", "--checkpoint", f"cp{i}", "bd-x")[0])
        ck["torpor"].append(clis.torpor("checkpoint", "create", "bt-x", f"cp{i}")[0])
        st["torpor"].append(clis.torpor("start", "--checkpoint", f"cp{i}", "bt-x")[0])
    out["checkpoint create"] = ck
    out["start --checkpoint"] = st
    clis.docker("rm", "-f", "bd-x")
    clis.torpor("rm", "-f", "bt-x")
    return out


def summary(results: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    rows = {}
    for op, by in results.items():
        rows[op] = {k: {"median_ms": round(statistics.median(v), 1),
                        "p95_ms": round(pct(v, 95), 1), "n": len(v)}
                    for k, v in by.items()}  # fmt: skip
    return rows


def write(rows: dict[str, Any], n: int) -> None:
    meta = {"python": platform.python_version(), "cpus": os.cpu_count(), "n": n,
            "docker_cli": subprocess.run([DOCKER, "--version"], capture_output=True,
                                         text=True).stdout.strip()}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "docker_api.json").write_text(json.dumps({"meta": meta, "results": rows},
                                                        indent=2) + "\n")  # fmt: skip
    lines = [
        "# Docker Engine API benchmark (torpor dockerd)",
        "",
        f"{meta['docker_cli']} through `torpor dockerd` against torpor's own CLI on the "
        f"same TORPOR_HOME, {n} runs each; Python {meta['python']}, {meta['cpus']} CPUs. "
        "Each command is a new process, timed from start to exit. The checkpoint is of a "
        "container running a small Python process, and stops it; the start restores it.",
        "",
        "| operation | docker CLI median ms | p95 | torpor CLI median ms | p95 | docker / torpor |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for op, by in rows.items():
        d, t = by["docker"], by["torpor"]
        lines.append(f"| {op} | {d['median_ms']} | {d['p95_ms']} | {t['median_ms']} | "
                     f"{t['p95_ms']} | {d['median_ms'] / t['median_ms']:.2f} |")  # fmt: skip
    lines += ["", "The docker CLI is a Go binary talking to a daemon that already holds the "
              "engine; torpor's CLI starts Python and opens the engine for every command, "
              "which is most of the difference (the `ps` row: no sandbox work at all)."]
    (RESULTS / "docker_api.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="5 runs each instead of 20")
    ap.add_argument("-n", type=int, default=None)
    args = ap.parse_args()
    n = args.n or (5 if args.quick else 20)
    home = Path(tempfile.mkdtemp(prefix="torpor-bench-docker-"))
    images = home / "images"
    images.mkdir()
    base = ImageStore().get(BASE_IMAGE)
    (images / image_mod._dir_name(BASE_IMAGE)).symlink_to(base.rootfs.parent)
    d = start_dockerd(home, images)
    config = home / "docker-config"
    config.mkdir()
    try:
        clis = Clis(dict(os.environ, DOCKER_HOST=d.url, DOCKER_CONFIG=str(config)), d.env)
        clis.torpor("ps")  # warm: the page cache, the doctor's verdict
        clis.docker("ps")
        rows = summary(bench(clis, n))
    finally:
        stop_dockerd(d)
        for sb in (home / "sandboxes").glob("*"):
            subprocess.run(["runsc", f"--root={home / 'runsc'}", "delete", "-force", sb.name],
                           capture_output=True)  # fmt: skip
        shutil.rmtree(home, ignore_errors=True)
    write(rows, n)


if __name__ == "__main__":
    main()
