"""The send path, from a due `send` step to a recorded outcome — the heart of the send promise.

    outbox       the one send transaction: for a batch of enrollments due at a send step,
                 checks 1–5 (guards/pipeline), the outbox insert and the move on, committed
                 together, serialized per contact
    guards/      the checks in order — consent, suppression (and topic opt-outs),
                 reachability, quiet hours, frequency caps — `pipeline` the one place that
                 runs them, for the first send and for every delivery attempt
    deliver      claim queued rows with the checks run again, render, hand over to the
                 channel, record each result
    reconcile    rows a crashed worker left `sending`: ask the channel what happened
    render       one claimed message → the channel's OutgoingMessage
    context      the one template context builder (delivery, preview, system mail, test sends)
    system_mail  Nurture's own transactional mail (the double opt-in confirmation and reminder)
    preview      what a contact would receive, rendered with the same context, sending nothing

Message statuses are `nurture.store.models.MessageStatus`.
"""
