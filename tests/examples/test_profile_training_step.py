"""``examples/benchmark/profile_training_step.py``: every part and step is timed, ratios against contrastive off."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "benchmark" / "profile_training_step.py"


def test_prints_every_part_and_step_with_its_ratio() -> None:
    arguments = ["--backbone", "resnet18", "--size", "32", "--batch", "4", "--categories", "2", "--repeats", "1"]
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    assert lines[0] == "ClassAwareRecon, resnet18, 32 px, batch 4, 1 thread(s)"
    matches = [re.match(r"(.+?)\s+([\d.]+) ms", line) for line in lines[1:]]
    timings = {match[1].strip(): float(match[2]) for match in matches if match}
    assert len(timings) == 8 and all(value > 0 for value in timings.values()), timings
    ratios = dict(re.findall(r"^(step, .+?)\s+[\d.]+ ms\s+\(([\d.]+)x contrastive off\)$", completed.stdout, re.M))
    assert ratios["step, contrastive off"] == "1.00"
    assert set(ratios) == {name for name in timings if name.startswith("step, ")}
