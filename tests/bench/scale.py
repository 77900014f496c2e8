"""The scale row's refresh, measured in a process of its own for each vgpumon tree.

`refresh.measure_refresh` imports vgpumon; to measure the tree under test and a baseline tree
on the same host, each runs in ``python -m tests.bench.scale`` with its tree first on the
path, and hands its figures back as JSON. (The daemon half of the row, its CPU per refresh
and its RSS, is measured on `vgpumon run` itself: see sidebyside.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def refresh_in_tree(env: dict[str, str], config: dict[str, Any], rounds: int,
                    expect_tracked: int) -> dict[str, Any]:
    """`measure_refresh` run by the vgpumon found through `env`'s PYTHONPATH."""
    proc = subprocess.run([sys.executable, "-m", "tests.bench.scale", str(rounds),
                           str(expect_tracked)], input=json.dumps(config), env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"refresh in {env.get('PYTHONPATH')} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def main() -> int:
    from tests.bench.refresh import measure_refresh

    rounds, expect = int(sys.argv[1]), int(sys.argv[2])
    cost = measure_refresh(json.loads(sys.stdin.read()), rounds, expect_tracked=expect)
    print(json.dumps(cost.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
