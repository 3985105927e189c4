"""Layer 5 — audit: whether a robustness number can be trusted. Attack-failure indicators run
beside attack cells (indicators), and the worst case per image over every attack of a threat model,
with the cross-attack flags it makes possible (worst_case)."""
