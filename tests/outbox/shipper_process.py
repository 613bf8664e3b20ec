"""Subprocess for the crash test: ship an outbox to a ledger until killed."""

import sys
import time

from outbox_fixtures import NODE

from node.receipt_outbox import ReceiptOutbox
from node.receipt_shipper import ReceiptShipper

outbox = ReceiptOutbox(sys.argv[1], ack_grace_ms=0)
shipper = ReceiptShipper(outbox, sys.argv[2], NODE, batch_size=int(sys.argv[3]), interval_s=0.05).start()
print("started", flush=True)
time.sleep(600)
