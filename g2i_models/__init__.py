"""The ML library: autoencoder, SNP encoder, conditional UNet, diffusion training and sampling.

Knows nothing of Flower: the federated client and the centralized baseline call the same
functions.
"""

from g2i_models.snp_encoder import SNPEncoder

__version__ = "0.1.0"

# ``G2IPipeline.from_pretrained`` finds the SNP encoder class through this package.
__all__ = ["SNPEncoder", "__version__"]
