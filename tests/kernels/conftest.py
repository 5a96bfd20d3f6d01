"""The kernel tests import their shared checks (``kernel_checks.py``) from this folder, whatever
pytest's import mode."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
