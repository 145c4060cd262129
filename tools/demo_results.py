"""Run `jbtrace demo` and keep its headline numbers in bench/results/demo.json.

Per model: the sensitivity index of log_norm with its bootstrap interval and the permutation
null's mean (chance level), the share of tested cells significant at q = 0.05, and the prompt
lengths (tokens) of each scenario — the length gap is what a reader must weigh against every
difference the demo shows. Also the ranking, the wall time and the load average at the start.

Run: PYTHONPATH=src python tools/demo_results.py [OUT_DIR]   (default: runs/demo)
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULT = Path("bench/results/demo.json")


def headline(run: Path) -> dict:
    compare = json.loads((run / "compare.json").read_text())
    models = {}
    for name, model in compare["models"].items():
        stat = model["stats"]["log_norm"]
        models[name] = {
            "label": model["label"],
            "random_init": model["random_init"],
            "index": stat["index"]["value"],
            "index_ci": [stat["index"]["ci_low"], stat["index"]["ci_high"]],
            "chance": stat["index"]["null_mean"],
            "significant_cell_share": stat["cells"]["significant_share"],
            "median_tokens": {k: v["quantiles"]["0.5"] for k, v in model["lengths"].items()},
        }
    return {"models": models, "ranking": compare["ranking"]["log_norm"]["order"]}


def main(out: Path) -> None:
    load, start = os.getloadavg()[0], time.time()
    command = ["jbtrace", "demo", "-o", str(out), "--quiet"]
    subprocess.run([sys.executable, "-m", *command], check=True)
    result = {
        "command": "PYTHONPATH=src python tools/demo_results.py",
        "demo": " ".join(command),
        "prompts": [
            {k: p[k] for k in ("name", "source", "sha256", "size")}
            for p in json.loads((out / "run.json").read_text())["provenance"]["prompt_sets"]
        ],
        **headline(out),
        "seconds": round(time.time() - start, 1),
        "load_average_at_start": load,
        "cpus": os.cpu_count(),
    }
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
