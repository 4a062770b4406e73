"""The RL-100 teacher: imitation, OPE-gated offline RL and online DPPO on the denoising
chain of a diffusion policy."""
