"""The ``napari-vitcam`` command line (a front end): :mod:`.main` dispatches to one module per command."""
