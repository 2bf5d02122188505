"""Pure-function JAX heads over cached features: init/apply, losses, optax training, sweeps."""
