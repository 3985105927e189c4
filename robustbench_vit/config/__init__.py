"""Layer 2 — configuration: YAML reading (reader), the suite spec (pydantic, located errors),
expansion into cells (suite), `load_suite` (load) and the JSON Schema (schema)."""
