"""Flower ClientApp of G2I-Fed: one per site, thin over ``preprocessing`` and ``g2i_models``."""
