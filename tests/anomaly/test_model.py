"""The sparse autoencoder: KL term, loss, learning a toy set, determinism, weights-only files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from iotwatch.anomaly.model import (
    SparseAutoencoder,
    TrainSettings,
    fit_autoencoder,
    kl_sparsity,
    load_weights,
    reconstruction_errors,
    save_weights,
    train_autoencoder,
)

SETTINGS = TrainSettings(max_epochs=8, batch_size=64, patience=3, accelerator="cpu")


def test_kl_sparsity_matches_hand_computation() -> None:
    rho, hats = 0.1, [0.2, 0.05, 0.1]
    want = sum(rho * math.log(rho / q) + (1 - rho) * math.log((1 - rho) / (1 - q)) for q in hats)
    got = kl_sparsity(rho, torch.tensor(hats, dtype=torch.float64))
    assert got.item() == pytest.approx(want, rel=1e-12)
    # 0.1 * ln(0.5) + 0.9 * ln(0.9 / 0.8) for the first unit alone
    assert kl_sparsity(0.1, torch.tensor([0.2], dtype=torch.float64)).item() == pytest.approx(
        0.1 * math.log(0.5) + 0.9 * math.log(1.125), rel=1e-12
    )
    assert kl_sparsity(rho, torch.tensor([rho])).item() == pytest.approx(0.0, abs=1e-7)
    assert math.isfinite(kl_sparsity(rho, torch.tensor([0.0, 1.0])).item())  # clamped


def test_loss_is_mse_plus_weighted_kl() -> None:
    torch.manual_seed(0)
    m = SparseAutoencoder(4, hidden=3, lr=0.01, sparsity_target=0.1, sparsity_weight=0.2)
    x = torch.randn(5, 4)
    loss, mse, kl = m.losses(x)
    h = torch.sigmoid(m.encoder(x))
    recon = m.decoder(h)
    assert mse.item() == pytest.approx(torch.mean((recon - x) ** 2).item(), rel=1e-6)
    assert kl.item() == pytest.approx(kl_sparsity(0.1, h.mean(0)).item(), rel=1e-6)
    assert loss.item() == pytest.approx(mse.item() + 0.2 * kl.item(), rel=1e-6)
    assert m(x)[1].shape == (5, 3)


def _toy(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Legitimate flows near a 2-D plane in 8-D (standardised); attacks off it, far away."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(2, 8))

    def legit(n: int) -> np.ndarray:
        return rng.normal(size=(n, 2)) @ basis + 0.05 * rng.normal(size=(n, 8))

    train, val, test_legit = legit(400), legit(100), legit(100)
    attack = rng.normal(loc=3.0, scale=1.0, size=(100, 8))
    x = np.concatenate([test_legit, attack])
    y = np.r_[np.zeros(100, bool), np.ones(100, bool)]
    return train, val, x, y


def test_autoencoder_learns_toy_set_and_is_deterministic() -> None:
    from sklearn.metrics import roc_auc_score

    train, val, x, y = _toy()
    runs = []
    hparams = {"n_features": 8, "hidden": 16, "lr": 0.01, "sparsity_target": 0.1,
               "sparsity_weight": 0.2}  # fmt: skip
    for _ in range(2):
        runs.append(fit_autoencoder(train, val, hparams, SETTINGS, seed=3))
    (m1, info1), (m2, _) = runs
    scores = reconstruction_errors(m1, x)
    auc = roc_auc_score(y, scores)
    assert auc > 0.95, auc
    assert 1 <= info1["epochs"] <= SETTINGS.max_epochs
    assert 0 <= info1["best_epoch"] < info1["epochs"]
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert np.array_equal(scores, reconstruction_errors(m2, x))


def test_early_stopping_stops_before_max_epochs() -> None:
    train, val, _, _ = _toy()
    m = SparseAutoencoder(8, hidden=4, lr=0.5, sparsity_target=0.1, sparsity_weight=0.2)
    settings = TrainSettings(max_epochs=200, batch_size=400, patience=1, min_delta=10.0)
    info = train_autoencoder(m, train, val, settings, seed=0)
    assert info["epochs"] <= 3  # min_delta=10 means no epoch ever counts as an improvement


def test_weights_round_trip_weights_only(tmp_path) -> None:
    m = SparseAutoencoder(5, hidden=3, lr=0.01, sparsity_target=0.1, sparsity_weight=0.2)
    save_weights(m, tmp_path / "w" / "state_dict.pt")
    state = torch.load(tmp_path / "w" / "state_dict.pt", weights_only=True)
    assert set(state) == {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"}
    back = load_weights(tmp_path / "w" / "state_dict.pt", n_features=5, hidden=3)
    x = np.random.default_rng(0).normal(size=(4, 5))
    assert np.array_equal(reconstruction_errors(m, x), reconstruction_errors(back, x))


def test_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="sparsity_target"):
        SparseAutoencoder(4, sparsity_target=1.0)
    with pytest.raises(ValueError, match="output"):
        SparseAutoencoder(4, output="relu")
    with pytest.raises(ValueError, match="run_id needs its tracking_uri"):
        train_autoencoder(
            SparseAutoencoder(2, hidden=2), np.zeros((4, 2)), np.zeros((2, 2)), SETTINGS, 0,
            run_id="abc",
        )  # fmt: skip
