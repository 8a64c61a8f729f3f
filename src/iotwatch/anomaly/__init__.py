"""Step 2, "Is it behaving?": one sparse autoencoder per device type, trained on that device's
legitimate flows; a flow whose reconstruction error passes a threshold is an attack.

Modules: ``model`` (the Lightning autoencoder and its trainer), ``scaling`` (log1p + standardise,
JSON), ``threshold`` (best-F1 and FPR thresholds, metrics), ``data`` (per-device splits),
``baselines`` (IsolationForest, One-Class SVM, PCA, kNN) and ``stage`` (``run``, AnomalyConfig).
Heavy imports (torch, Lightning, sklearn) happen inside the functions.
"""
