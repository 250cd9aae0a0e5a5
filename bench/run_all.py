"""Run every benchmark script in turn (about 30-40 minutes on a 2-core CPU)."""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = [
    ["bench_speed.py"],
    ["bench_speed.py", "--full-width", "--size", "256", "--rounds", "2"],
    ["bench_ratio.py"],
    ["bench_stack.py"],
    ["bench_instances.py"],
    ["bench_import.py"],
    ["bench_memory.py"],
    ["bench_soak.py"],
    ["eval_real_nuclei.py"],
]


def main() -> int:
    failed = 0
    for args in SCRIPTS:
        print(f"\n## {' '.join(args)}", flush=True)
        failed += subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]]).returncode != 0
    if os.environ.get("DISPLAY"):
        print("\n## bench_ui.py", flush=True)
        failed += subprocess.run([sys.executable, str(HERE / "bench_ui.py")]).returncode != 0
    else:
        print("\n## bench_ui.py skipped: needs a display (run it under xvfb-run)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
