"""Layer 4 — report: the HTML page model (page), plot data and helpers (plots), SVG drawing
(svg), and the self-contained page writer with its template (html, templates/)."""
