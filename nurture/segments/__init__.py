"""Segments and their nightly sync: membership computed in SQL, diffed against what each
destination acknowledged, pushed through the registry's CRM and audience integrations.

validate (`validation`) → compute (`membership`) → diff and push (`sync`); the identifier
rules of each ad platform live in `identifiers`, the per-provider throttle hook in `throttle`.
"""
