"""Wire protocols of call platforms, one module each (sans-I/O)."""
