"""The sparse autoencoder (PyTorch Lightning) and its deterministic training loop.

One hidden layer with a sigmoid activation; the output layer is linear by default (the inputs
are standardised, so they are not bounded to (0, 1)) or a sigmoid (``output: sigmoid``).
Loss = mean squared reconstruction error + ``sparsity_weight`` * sum over hidden units of
KL(rho || rho_hat_j), rho_hat_j = the batch mean activation of hidden unit j. Early stopping
watches the reconstruction MSE of legitimate validation flows (``val_loss``); the best epoch's
weights are kept in memory (no checkpoint files are written).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np

log = logging.getLogger(__name__)

EPS = 1e-7  # rho_hat is clamped to [EPS, 1 - EPS] so the KL term stays finite


def kl_sparsity(rho: float, rho_hat: torch.Tensor) -> torch.Tensor:
    """Sum over hidden units of KL(rho || rho_hat_j) between Bernoulli distributions:
    rho log(rho / rho_hat) + (1 - rho) log((1 - rho) / (1 - rho_hat))."""
    rho_hat = torch.clamp(rho_hat, EPS, 1.0 - EPS)
    rho_t = torch.as_tensor(rho, dtype=rho_hat.dtype, device=rho_hat.device)
    kl = rho_t * torch.log(rho_t / rho_hat) + (1 - rho_t) * torch.log((1 - rho_t) / (1 - rho_hat))
    return kl.sum()


class SparseAutoencoder(pl.LightningModule):
    """n_features -> hidden (sigmoid) -> n_features (linear or sigmoid), Adam(lr)."""

    def __init__(
        self,
        n_features: int,
        hidden: int = 500,
        lr: float = 0.01,
        sparsity_target: float = 0.1,
        sparsity_weight: float = 0.2,
        output: str = "linear",
    ) -> None:
        super().__init__()
        if n_features < 1 or hidden < 1:
            raise ValueError(f"n_features and hidden must be >= 1, got {n_features}, {hidden}")
        if not 0.0 < sparsity_target < 1.0:
            raise ValueError(f"sparsity_target must be in (0, 1), got {sparsity_target}")
        if output not in ("linear", "sigmoid"):
            raise ValueError(f"output must be linear or sigmoid, got {output!r}")
        self.save_hyperparameters()
        self.encoder = nn.Linear(n_features, hidden)
        self.decoder = nn.Linear(hidden, n_features)
        self.lr = lr
        self.sparsity_target = sparsity_target
        self.sparsity_weight = sparsity_weight
        self.output = output

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.encoder(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, hidden activations)."""
        h = self.encode(x)
        out = self.decoder(h)
        if self.output == "sigmoid":
            out = torch.sigmoid(out)
        return out, h

    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total loss, reconstruction MSE, KL sparsity term) of a batch."""
        recon, h = self(x)
        mse = torch.mean((recon - x) ** 2)
        kl = kl_sparsity(self.sparsity_target, h.mean(dim=0))
        return mse + self.sparsity_weight * kl, mse, kl

    # Epoch means are accumulated here and logged once per epoch: a self.log call per step
    # cost more than the step itself (3.7 of 8.5 s for 30 epochs of 30 batches on 2 cores).
    def on_train_epoch_start(self) -> None:
        self._train_sums = torch.zeros(3)
        self._train_n = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x,) = batch
        loss, mse, kl = self.losses(x)
        n = len(x)
        self._train_sums += torch.stack([loss, mse, kl]).detach().cpu() * n
        self._train_n += n
        return loss

    def on_train_epoch_end(self) -> None:
        if self._train_n:
            means = self._train_sums / self._train_n
            for name, value in zip(("train_loss", "train_mse", "train_kl"), means, strict=True):
                self.log(name, value, on_step=False, on_epoch=True)

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros(())
        self._val_n = 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        (x,) = batch
        recon, _ = self(x)
        # Early stopping watches the reconstruction error of legitimate flows only.
        self._val_sum += torch.sum((recon - x) ** 2).detach().cpu() / x.shape[1]
        self._val_n += len(x)

    def on_validation_epoch_end(self) -> None:
        if self._val_n:
            self.log("val_loss", self._val_sum / self._val_n, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class _BestWeights(pl.Callback):
    """Keep the weights of the epoch with the lowest ``val_loss`` in memory."""

    def __init__(self) -> None:
        self.best = float("inf")
        self.best_epoch = -1
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        val = trainer.callback_metrics.get("val_loss")
        if val is None:
            return
        val = float(val)
        if val < self.best:
            self.best = val
            self.best_epoch = int(trainer.current_epoch)
            self.state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}


@dataclass
class TrainSettings:
    """How to train: the AE's trainer settings (from AnomalyConfig)."""

    max_epochs: int
    batch_size: int
    patience: int
    min_delta: float = 0.0
    accelerator: str = "auto"
    enable_progress_bar: bool = False
    threads: int = 1  # torch's CPU threads while training (0 = torch's default)


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` (0: left as they are), restored afterwards."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _loader(x: np.ndarray, batch_size: int, shuffle: bool, seed: int) -> Any:
    import numpy as np
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=0)


def train_autoencoder(
    model: SparseAutoencoder,
    train_x: np.ndarray,
    val_x: np.ndarray,
    settings: TrainSettings,
    seed: int,
    *,
    work_dir: Path | str | None = None,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    callbacks: list[pl.Callback] | None = None,
    log_prefix: str = "",
) -> dict[str, Any]:
    """Fit ``model`` on ``train_x`` (scaled legitimate flows), early-stopping on the MSE of
    ``val_x`` (scaled legitimate validation flows); restores the best epoch's weights and
    leaves the model on the CPU in eval mode. With ``tracking_uri`` and ``run_id`` the
    per-epoch losses go to that existing MLflow run; otherwise no logger. Nothing is written
    outside ``work_dir`` (a temporary folder when None). ``callbacks`` are added to the
    trainer's (e.g. the tune stage's pruning callback); ``log_prefix`` names the logged curves
    ``<prefix>-train_loss`` etc. (two candidates logged to one run). Returns epochs, best epoch/loss, seconds.
    The model's initial weights are the caller's: seed before building it (``fit_autoencoder``).
    """
    from pytorch_lightning.callbacks import EarlyStopping

    if len(train_x) == 0 or len(val_x) == 0:
        raise ValueError("train_autoencoder needs at least one training and one validation flow")
    pl.seed_everything(seed, workers=True, verbose=False)
    logger: Any = False
    if run_id is not None:
        if tracking_uri is None:
            raise ValueError("an MLflow run_id needs its tracking_uri")
        from pytorch_lightning.loggers import MLFlowLogger

        logger = MLFlowLogger(tracking_uri=tracking_uri, run_id=run_id, prefix=log_prefix)
    best = _BestWeights()
    stop = EarlyStopping(
        monitor="val_loss", mode="min", patience=settings.patience, min_delta=settings.min_delta
    )
    for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="iotwatch-ae-") as tmp,
        warnings.catch_warnings(),
        _torch_threads(settings.threads),
    ):
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*number of training batches.*")
        warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
        trainer = pl.Trainer(
            accelerator=settings.accelerator,
            devices=1,
            max_epochs=settings.max_epochs,
            deterministic=True,
            logger=logger,
            callbacks=[stop, best, *(callbacks or [])],
            enable_checkpointing=False,
            enable_progress_bar=settings.enable_progress_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=str(work_dir or tmp),
        )
        trainer.fit(
            model,
            train_dataloaders=_loader(train_x, settings.batch_size, True, seed),
            val_dataloaders=_loader(val_x, max(settings.batch_size, 4096), False, seed),
        )
        epochs = int(trainer.current_epoch)
    seconds = time.perf_counter() - t0
    if best.state is not None:
        model.load_state_dict(best.state)
    model.to("cpu")
    model.eval()
    return {
        "epochs": epochs,
        "best_epoch": best.best_epoch,
        "best_val_loss": best.best,
        "seconds": seconds,
    }


def fit_autoencoder(
    train_x: np.ndarray,
    val_x: np.ndarray,
    hparams: dict[str, Any],
    settings: TrainSettings,
    seed: int,
    **kwargs: Any,
) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """Seed, build ``SparseAutoencoder(**hparams)`` (so its initial weights follow the seed) and
    ``train_autoencoder`` it; same seed + data + settings = the same weights on CPU."""
    pl.seed_everything(seed, workers=True, verbose=False)
    model = SparseAutoencoder(**hparams)
    return model, train_autoencoder(model, train_x, val_x, settings, seed, **kwargs)


def reconstruction_errors(
    model: SparseAutoencoder, x: np.ndarray, batch_size: int = 4096
) -> np.ndarray:
    """Per-flow mean squared reconstruction error (the anomaly score; higher = more anomalous)."""
    import numpy as np

    model = model.to("cpu")
    model.eval()
    out = []
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        for i in range(0, len(xt), batch_size):
            chunk = xt[i : i + batch_size]
            recon, _ = model(chunk)
            out.append(torch.mean((recon - chunk) ** 2, dim=1).numpy())
    if not out:
        return np.zeros(0, dtype="float64")
    return np.concatenate(out).astype("float64")


def save_weights(model: SparseAutoencoder, path: Path) -> None:
    """Weights only (a state dict of tensors), loadable with torch.load(weights_only=True)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def load_weights(path: Path | str, **hparams: Any) -> SparseAutoencoder:
    """Rebuild a SparseAutoencoder from ``save_weights``' file and its hyperparameters."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = SparseAutoencoder(**hparams)
    model.load_state_dict(state)
    model.eval()
    return model
