"""The fastai Learner a configuration describes: its DataLoaders, the U-Net over the encoder, the loss and the
progress metrics. `fit` trains it; `load_run` rebuilds it to export a run."""

from __future__ import annotations

from .config import TrainConfig
from .data import Dataset, fit_dataset, make_dataloaders
from .losses import SegmentationLoss
from .metrics import progress_metrics
from .model import ENCODERS, build_learner


def dataloaders_for(config: TrainConfig, ds: Dataset, *, augment: str | None = None, half: bool = False):
    spec = ENCODERS[config.encoder]
    size, crop = config.resolved_size(ds), config.crop
    if half:  # progressive resizing: the same scale ratio, half the pixels per side
        size = (max(32, size[0] // 2), max(32, size[1] // 2))
        crop = (max(32, crop[0] // 2), max(32, crop[1] // 2)) if crop else None
    augment = config.resolved_augment() if augment is None else augment
    return make_dataloaders(
        ds,
        size=size,
        crop=crop,
        bs=config.bs,
        mean=spec.mean,
        std=spec.std,
        valid_pct=config.valid_pct,
        seed=config.seed,
        augment=augment,
        class_crops=config.class_crops,
        zoom=config.zoom,
        field=_field(config, size) if augment == "field" else None,
    )


def _field(config: TrainConfig, size: tuple[int, int]):
    """The camera shifts of --augment field (training.augment), scaled to the training width."""
    from .augment import FieldShifts

    return FieldShifts(config.field_p, scale=size[1] / 480, kinds=config.field_kinds)


def learner_for(
    config: TrainConfig, ds: Dataset | None = None, *, augment: str | None = None, weights=None, half: bool = False
):
    """Rebuild the learner (DataLoaders + U-Net) that `config` describes; used by fit and by export.
    `weights`: class weights of the loss (None: unweighted); `half`: DataLoaders at half the size and crop."""
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    ds = ds or fit_dataset(config.data, config.valid)
    loss = config.resolved_loss()
    learn = build_learner(
        dataloaders_for(config, ds, augment=augment, half=half),
        n_out=ds.n_classes,
        encoder=config.encoder,
        pretrained=config.pretrained,
        weights=config.weights,
        allow_random=config.allow_random,
        metrics=progress_metrics(ds.codes, ds.void),
        last_cross=config.last_cross,
        opt=config.opt,
        decoder_norm=config.decoder_norm,
        input_norm=config.input_norm,
        loss_func=SegmentationLoss(weights, ds.void, dice=loss == "ce+dice", lovasz=loss == "ce+lovasz"),
    )
    if config.bn_momentum is not None:
        for m in learn.model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.momentum = config.bn_momentum
    return learn, ds
