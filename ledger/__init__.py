"""ledger role of Corolla (see ARCHITECTURE.md)."""
