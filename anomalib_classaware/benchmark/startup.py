"""Measure what the plugin's start-up hook costs every interpreter in the environment.

``python -m anomalib_classaware.benchmark.startup [--runs 30]`` prints, over ``--runs`` fresh
interpreters each:

* the median cumulative ``-X importtime`` of ``anomalib_classaware._autoload`` (the only code the
  ``.pth`` hook runs at start-up), and whether torch/anomalib were imported (they must not be);
* the median cumulative ``-X importtime`` of ``site`` (all start-up hooks of the environment), for scale;
* the median wall time of ``python -c pass``.

A first interpreter writes the bytecode cache (regular installs compile it at install time; an
editable install compiles on first use unless ``PYTHONDONTWRITEBYTECODE`` is set).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def _start_up_import_us(runs: int) -> tuple[float, float, bool]:
    hook, site, heavy = [], [], False
    for _ in range(runs):
        stderr = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, check=True
        ).stderr
        for line in stderr.splitlines():
            parts = [part.strip() for part in line.removeprefix("import time:").split("|")]
            if len(parts) != 3 or not parts[0].isdigit():
                continue
            if parts[2] == "anomalib_classaware._autoload":
                hook.append(float(parts[1]))
            elif parts[2] == "site":
                site.append(float(parts[1]))
            heavy |= parts[2].split(".")[0] in {"torch", "anomalib"}
    if not hook:
        msg = "anomalib_classaware._autoload was not imported at start-up: is the .pth hook installed?"
        raise RuntimeError(msg)
    return statistics.median(hook), statistics.median(site), heavy


def _median_wall_ms(command: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> None:
    """Print the start-up cost of the plugin hook."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="fresh interpreters per measurement")
    args = parser.parse_args(argv)

    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)  # write the bytecode cache
    hook_us, site_us, heavy = _start_up_import_us(args.runs)
    wall = _median_wall_ms([sys.executable, "-c", "pass"], args.runs)
    print(f"interpreters per measurement: {args.runs}")
    print(f"start-up hook (anomalib_classaware._autoload), median cumulative -X importtime: {hook_us / 1e3:.2f} ms")
    print(f"all of site (every .pth hook of this environment), same measure:            {site_us / 1e3:.2f} ms")
    print(f"torch or anomalib imported at start-up: {'YES' if heavy else 'no'}")
    print(f"python -c pass, median wall time: {wall:.1f} ms")


if __name__ == "__main__":
    main()
