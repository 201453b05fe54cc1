"""The studies: federated and centralized runs over the synthetic cohort, scored and reported.

Drivers only: the cohort comes from ``simulations``, the models from ``g2i_models`` and the
scores from ``g2i_eval``. Modules: ``study`` (``g2i-study``), ``evaluate_cli``
(``g2i-evaluate``), ``federation`` (runs ``flwr run``) and ``study_report``.
"""
