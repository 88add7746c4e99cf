"""Task family (built by a later issue)."""
