"""Amortised deconvolution: methods trained on (clean, observed) pairs that answer in one
pass or a few (conditional diffusion, conditional VAE, Tikhonov + learned denoiser), joint
multi-survey deconvolution, and the metrics that compare them with posterior sampling."""
