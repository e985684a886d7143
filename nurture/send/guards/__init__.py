"""The checks before every send, in the order of the send promise: consent, suppression (and
topic opt-outs), reachability, quiet hours, frequency caps. `pipeline` runs them in that order
for a batch and is the only caller of the others. Policy logic is pure and table-tested
(consent, quiet_hours, frequency_cap, reachability, suppression_reason); what needs the
database is one query per batch (the consent ledger, the suppression list, the cap history)."""
