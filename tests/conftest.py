import sys
from pathlib import Path

# Test helpers (setmodel.py) live beside the tests; the package itself is
# imported from the installed copy, never from the source tree.
sys.path.insert(0, str(Path(__file__).parent))
