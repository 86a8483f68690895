"""Training of target diffusion models on member splits (`mia-train`)."""
