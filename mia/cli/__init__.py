"""The command-line entry points (thin ``@hydra.main`` functions) and the Hydra helpers they share."""
