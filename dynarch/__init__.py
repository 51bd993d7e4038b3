"""dynarch: dynamic-architecture training on Keras 3 / TensorFlow, configured with Hydra.

Importing the package does not import TensorFlow; only training, building and migration do.
"""
__version__ = "0.1.0"
