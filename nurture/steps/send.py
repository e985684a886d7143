"""The `send` step: a message on a channel. Each batch of due enrollments is one send
transaction of the send package (nurture.send.outbox: checks 1–5, the outbox insert and the
move on, committed together); delivery follows in the tick's deliver stage."""
from __future__ import annotations

from collections import Counter
from datetime import datetime

from nurture.compiler import Node, Plan
from nurture.runtime.context import Runtime
from nurture.send.outbox import queue_due


def handle(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
    return queue_due(rt, plan, node, now, report)
