"""protocol role of Corolla (see ARCHITECTURE.md)."""
