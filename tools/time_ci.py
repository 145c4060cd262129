"""Time what CI does on a fresh clone of this repository: `bash .ci/run` (install from the lock,
`make lint`, `make test`), and keep the time and pytest's closing line in bench/results/ci.json.

Run: python tools/time_ci.py          (clones HEAD into a temporary folder; takes the suite's time)
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "ci.json"


def main() -> int:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        load, start = os.getloadavg()[0], time.time()
        done = subprocess.run(
            ["bash", ".ci/run"], cwd=clone, capture_output=True, text=True, env={**os.environ}
        )
        seconds = time.time() - start
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    passed = re.search(r"(\d+) passed", tail)
    result = {
        "command": "python tools/time_ci.py",
        "commit": commit,
        "ci": "bash .ci/run on a fresh clone (install from the lock, make lint, make test)",
        "exit_code": done.returncode,
        "seconds": round(seconds, 1),
        "pytest": tail,
        "tests_passed": int(passed.group(1)) if passed else None,
        "load_average_at_start": load,
        "cpus": os.cpu_count(),
    }
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    if done.returncode:
        print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
