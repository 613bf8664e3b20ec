"""node role of Corolla (see ARCHITECTURE.md)."""
