"""`make bench`: Overnight's speed goals, measured against baselines taken in the same run.

Nothing here is a unit test. Every figure is printed next to a baseline measured on the same machine in
the same run (a bare aiohttp client, or the ideal rate of a latency-bound upstream), so the ratios mean
something on any machine. Run `python -m bench --help` for the options.
"""

import sys
from pathlib import Path

# tests/support holds the process helpers (free ports, JSON calls, waiting for /health, the fake upstream)
# that the bench shares with the acceptance tests; pytest puts tests/ on the path, and so does this.
_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)
