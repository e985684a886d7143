"""Step kinds: what happens to the enrollments due at a journey step.

`advance` (the tick's advance stage) visits a plan's steps in topological order and hands
each step to the handler of its kind, looked up in `STEP_HANDLERS` (nurture.steps.advance).
One module per kind, one `handle(rt, plan, node, now, report) -> bool` each: wait,
wait_until, send, branch, wait_for, split, update, handover, exit. Adding a kind is a
module here, its line in `STEP_HANDLERS`, and its model in nurture.spec.models.

`transitions` is the bottom of the package — selecting the due enrollments of a step and
moving them on (`move`) — and imports none of the handlers, so a handler's helpers elsewhere
(nurture.scoring.handover, nurture.send.outbox) can move enrollments without an import cycle.
"""
