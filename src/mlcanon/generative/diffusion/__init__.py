"""Diffusion models: the forward process (:mod:`.schedules`), samplers and guidance (:mod:`.samplers`), the
shared model and its bound (:mod:`.model`), and the algorithms ``ddpm`` (:mod:`.ddpm`), ``noisy-classifier``
(:mod:`.noisy_classifier`) and ``latent-diffusion`` (:mod:`.latent`)."""
