"""Subprocess for the crash test: append receipts forever, print each id once append returned."""

import sys

from outbox_fixtures import make_receipt

from node.receipt_outbox import ReceiptOutbox

outbox = ReceiptOutbox(sys.argv[1], synchronous=sys.argv[2])
i = 0
while True:
    signed = make_receipt(i, acked=i % 2 == 0)
    outbox.append(signed)
    print(signed.id.hex(), flush=True)
    i += 1
