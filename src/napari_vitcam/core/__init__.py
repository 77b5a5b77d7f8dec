"""The bottom layer: errors and shared vocabulary. Imports nothing else of the package."""
