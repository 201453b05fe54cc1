"""Flower ServerApp of G2I-Fed: coordinates the sites, never sees their raw data."""
