"""MONAI bundle folders: the network, its weights and its input, read without running the bundle.

``config`` reads the files and follows ``@`` references (bounded), ``network``
builds the network (running the bundle's code only when trusted),
``transforms`` reads the input from the preprocessing transforms and the
metadata, and ``format`` is the checkpoint format that puts them together.
"""
