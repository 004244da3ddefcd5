"""Make ``backend`` importable when pytest runs without the package installed.

(The lead may replace this with ``pythonpath = ["."]`` in pyproject's pytest options.)
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
