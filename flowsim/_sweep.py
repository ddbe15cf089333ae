"""Kept for `flowsim/analysis/_scale_accuracy.py`, which imports `sweep` from here; the sweep lives in
`flowsim.harness` (analysis should not import the harness: see the harness README section)."""

from .harness import show_progress as show_progress
from .harness import sweep as sweep
