"""Quality metrics that need no downloaded network: SWD (any images) and MNIST Frechet distance."""
