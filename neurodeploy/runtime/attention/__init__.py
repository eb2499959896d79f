"""The spike-attention Lava Process and its ProcessModels."""
