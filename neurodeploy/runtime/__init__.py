"""Run exported decoders on Lava.

No module in this package has side effects on import: Lava's compiler
imports every module in the folder of a Process's module while it searches
for ProcessModels.
"""
