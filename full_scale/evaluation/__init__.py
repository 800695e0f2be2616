"""Scoring samples: the Inception network and Fréchet distance (``fid``), and FID / Inception Score of sample
batches, reference statistics, latent decoding and ADM-format export (``scoring``, the CLI
``python -m full_scale.evaluation``)."""
