"""The DVC pipeline: stage runners, params.yaml composition and the Hydra sweep entry."""
