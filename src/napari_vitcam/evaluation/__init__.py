"""Evaluating explanations: against a mask, against the model, against chance.

* :mod:`.localisation`: does the map agree with a region the user knows
  (pointing game, energy-based pointing, best-threshold IoU, per label)?
* :mod:`.faithfulness`: does removing (or revealing) what the map ranks first
  change the model's answer faster than random orders do (deletion and
  insertion curves, with baselines that are recorded)?
* :mod:`.randomization`: does the map depend on the model at all (the
  cascading model-parameter randomisation test)?

Above the pipeline, below the front ends. No Qt, no napari.
"""
