"""The ML library: autoencoder, SNP encoder, conditional UNet, diffusion training and sampling.

Knows nothing of Flower: the federated client and the centralized baseline call the same
functions. Modules: ``autoencoder``, ``snp_encoder``, ``unet`` (the four variants),
``diffusion`` (schedulers, loss, sampling), ``train`` (training and evaluation steps),
``pipeline`` (the saved model folder), ``datasets``, ``baseline``, ``plots``, ``cli``.
Evaluation (metrics, feature extractors, effects, audit) lives apart, in ``g2i_eval``.
"""

__version__ = "0.1.0"
