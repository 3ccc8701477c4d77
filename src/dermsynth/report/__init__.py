"""The study report: ``build_report(run_dir)`` writes ``report.html`` (self-contained) and ``summary.md``."""

from dermsynth.report.build import build_report
from dermsynth.report.results import Verdict, verdict

__all__ = ["Verdict", "build_report", "verdict"]
