"""Model I/O: checkpoint formats, architectures, specs and safe weight reading.

Above the engine (it probes targets with it), below the pipeline. No Qt, no napari.
"""
