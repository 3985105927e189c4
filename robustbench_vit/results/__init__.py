"""Layer 3 — results: the SQLite store, the long table and its pivot with text formats (table),
and gate checks as pure functions of rows (gates)."""
