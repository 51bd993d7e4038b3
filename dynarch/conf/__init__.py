"""Hydra reads the configs from here as `pkg://dynarch.conf` when dynarch is installed from a wheel."""
