"""Generative models: autoencoders, VAEs, GANs, autoregressive models, flows, diffusion."""
