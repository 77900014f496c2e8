"""The fuzz profile: 10,000 examples per parser, no deadline, reproducible.

Registered here, used explicitly by the fuzz tests (``FUZZ`` in `tests.fuzz.contracts`), never
loaded as the default: the rest of the suite keeps Hypothesis's own defaults.

- ``VGPUMON_FUZZ_EXAMPLES=N`` changes the number of examples (CI: 10,000; a nightly run may
  give 100,000; 200 for a quick look).
- By default the examples are derandomized (the same every run, seeded from each test) and
  nothing is stored. ``VGPUMON_FUZZ_RANDOM=1`` draws fresh examples and keeps failing ones in
  ``.hypothesis/fuzz`` (ignored by git); an input that broke a parser belongs in
  ``tests/fuzz/corpus/<parser>/`` as well.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

EXAMPLES = int(os.environ.get("VGPUMON_FUZZ_EXAMPLES", "10000"))
RANDOM = os.environ.get("VGPUMON_FUZZ_RANDOM", "") not in ("", "0")
DATABASE = Path(__file__).resolve().parents[2] / ".hypothesis" / "fuzz"

settings.register_profile(
    "fuzz",
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=DirectoryBasedExampleDatabase(str(DATABASE)) if RANDOM else None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
    print_blob=True,
)
