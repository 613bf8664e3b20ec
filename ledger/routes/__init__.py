"""HTTP routes of the ledger, one module per resource."""
