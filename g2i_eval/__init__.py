"""The evaluation library: how good, how faithful and how private a generated set is.

Apart from the generator (``g2i_models``), which it scores through ``G2IPipeline``. Modules:
``metrics`` (PSNR / SSIM / MS-SSIM, FID / KID), ``features`` and ``inception`` (the feature
extractors behind FID / KID and the audit), ``morphometry`` and ``effects`` (the APOE e4
effect vs the truth), ``classifier`` (real vs real + synthetic), ``memorisation`` (the
nearest-neighbour audit) and ``evaluation`` (all of them on one model).
"""
