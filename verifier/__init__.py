"""verifier role of Corolla (see ARCHITECTURE.md)."""
