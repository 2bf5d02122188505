"""`stage1 report`: a self-contained HTML + Markdown evaluation report of any run directory.

Which report a run gets is read off its artifacts (``run_kind``), never off a head kind: a run
that certified an exit threshold (``thresholds.json``) gets the threshold report
(``stage1.report.threshold``), a run that certified selective exit policies
(``scrcparams.json``) the selective one (``stage1.report.selective``: both selection scores'
risk-coverage curves with each policy's operating point, the certificates, the policies). Both
recompute the test numbers with stratified percentile-bootstrap intervals, write them back into
metrics.json, and render their figures (``plots``, ``selective_plots``) through one document
model (``document``).
"""

from stage1.report.common import ReportError
from stage1.report.headline import (
    BIASED,
    HEADLINE,
    headline_metrics,
    subset_metrics,
    update_metrics_json,
)
from stage1.report.threshold import build_report, load_run, run_kind

__all__ = [
    "BIASED",
    "HEADLINE",
    "ReportError",
    "build_report",
    "headline_metrics",
    "load_run",
    "run_kind",
    "subset_metrics",
    "update_metrics_json",
]
