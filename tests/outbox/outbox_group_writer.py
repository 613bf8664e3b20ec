"""Subprocess for the group-commit crash test: a node's hot path, step after step.

Each step queues its receipt and the ack of the step before (as a session's next step
brings it), then waits for `flush()` like the node's `ack` RPC does before answering, and
prints `receipt_id acked_id` once both are durable.
"""

import sys

from outbox_fixtures import CLIENT, make_receipt

from node.receipt_outbox import OutboxWriter, ReceiptOutbox

outbox = ReceiptOutbox(sys.argv[1], synchronous=sys.argv[2])
writer = OutboxWriter(outbox, linger_s=0.001)
previous = None
i = 0
while True:
    signed = make_receipt(i)
    writer.append(signed)
    if previous is not None:
        writer.attach(previous.id, previous.countersign(CLIENT).client_signature)
    writer.flush().result()
    print(signed.id.hex(), previous.id.hex() if previous is not None else "-", flush=True)
    previous, i = signed, i + 1
