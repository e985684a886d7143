"""Offline conversions to the ad platforms: the events `journeys/conversions.yaml` declares
(a purchase, a won deal, a contact becoming an MQL) sent once to each declared destination
(Meta Conversions API, Google Data Manager events, LinkedIn Conversions API, hashed CSV).

validate (`validation`) → select (`selection`: which stored events a declaration means, and
from when) → send (`send`: consent, age and identifiers checked at send time, batches,
acknowledged state in `conversion_delivery`, one `conversion_run` row per run). What a
destination sees and answers is `destination`; what is read out of an untrusted event
(value, currency, click ids, the de-duplication id) is `event_fields`.
"""
