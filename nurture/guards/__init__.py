"""The checks before every send: consent, suppression, reachability, quiet hours and
frequency caps. Policy logic is pure (quiet_hours, frequency_cap, reachability); the lookups
that need the database are one query per batch (consent, suppression)."""
