"""Reporting: what every journey earned — funnel per step, conversions, revenue, lift against
the holdout with a confidence interval, cost and ROI, attribution side by side — as data
(`build_report`), as a self-contained HTML page (`render_html`) and as the per-run summary the
journey flow leaves as Prefect artifacts (`journey_summary`)."""
from nurture.reporting.report import JourneyReport, Report, build_report
from nurture.reporting.summary import journey_summary

__all__ = ["JourneyReport", "Report", "build_report", "journey_summary"]
