"""Lead scoring: `journeys/scoring.yaml` (fit and behaviour points, decay, the MQL threshold,
lifecycle transitions), the set-based score computation, and the `handover` step that
passes MQLs to sales with an SLA."""
