"""Layer 0 — records and registries: errors, registries, cells (plain, picklable), component
contracts, parameters, metrics and measurements, plugin loading, cache paths, versions. Imports
nothing else of the package."""
