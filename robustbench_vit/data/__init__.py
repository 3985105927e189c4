"""Layer 1 — data: datasets, the 19 corruption functions and the corrupted-image cache, published
error tables (tables/)."""
