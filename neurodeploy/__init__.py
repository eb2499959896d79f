"""neurodeploy: train a spiking GPT decoder with lava-dl SLAYER and deploy
it to Lava's simulator or Loihi 2."""

__version__ = "0.1.0"
