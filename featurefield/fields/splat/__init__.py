"""The Gaussian feature field backend (``--field splat``): 3D Gaussians carrying learnable embeddings."""
