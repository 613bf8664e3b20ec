"""client role of Corolla (see ARCHITECTURE.md)."""
