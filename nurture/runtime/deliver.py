"""Moved: delivery is nurture.send.deliver, reconciliation nurture.send.reconcile."""
from nurture.send.deliver import deliver  # noqa: F401  # moved: see nurture/send/deliver.py
from nurture.send.reconcile import reconcile_stuck  # noqa: F401  # moved: see nurture/send/reconcile.py
