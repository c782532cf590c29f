"""The results as the analysis reads them: schema, manifest and store (no torch)."""
