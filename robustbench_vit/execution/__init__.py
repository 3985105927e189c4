"""Layer 6 — execution: run a suite (run), evaluate one cell (evaluate), chunks, runners (local,
Ray), progress bars, and gates over a run (gating)."""
