"""Reporting: what every journey earned — incremental revenue and ROI against the holdout with
their intervals (the headline), attributed revenue beside it, real costs (messages, SMS per
segment, offers, fixed costs), lift, funnel, clicks and A/B arms per step, attribution side by
side — as data (`build_report`), as JSON (`contract.report_json`), as a self-contained HTML
page (`html_page.render_html`) and as the per-run summary the journey flow leaves as Prefect
artifacts (`journey_summary`). Definitions: docs/report.md.

    report       the figures, read from the store in grouped SQL
    incremental  incremental revenue and ROI with Welch / normal intervals (pure)
    lift         Newcombe's interval of a difference of two rates (pure)
    costs        SMS segments, offer redemptions, fixed costs
    engagement   clicks and opens per step
    splits       A/B/n arms
    attribution  last touch, first touch, position-based (pure)
    views        the words and tables every view shares; format: how a figure is written
"""
from nurture.reporting.report import JourneyReport, Report, build_report
from nurture.reporting.summary import journey_summary

__all__ = ["JourneyReport", "Report", "build_report", "journey_summary"]
