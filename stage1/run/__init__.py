"""One run of a preset: load the cache's splits, train the head family, calibrate, certify,
evaluate, write the run directory (``stage1 train``)."""

from stage1.run.data import SplitData, ViewData, check_disjoint, load_cache, load_splits
from stage1.run.driver import RunSummary, run_training
from stage1.run.records import print_summary

__all__ = [
    "RunSummary",
    "SplitData",
    "ViewData",
    "check_disjoint",
    "load_cache",
    "load_splits",
    "print_summary",
    "run_training",
]
