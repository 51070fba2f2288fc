import sys
from pathlib import Path

# tests/ holds importable helpers (layouts.py: fixtures in the official data-set layouts;
# nbclean.py: the notebook cleaner) next to the tests themselves.
sys.path.insert(0, str(Path(__file__).resolve().parent))
