"""models role of Corolla (see ARCHITECTURE.md)."""
