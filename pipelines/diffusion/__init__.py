"""SDXL: loading and speed, the blended-latent-diffusion loop, SLD, erased encoders, few-step LoRAs."""
