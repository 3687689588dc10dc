"""A 2-process DDP run on the CPU (gloo) with every view, as its own script: Lightning's DDP launcher starts the
script again for rank 1, which a pytest process cannot be. Writes what each rank saw to <out>/rank<r>.json.

    python tests/scripts/ddp_run.py OUT_DIR STRATEGY     # STRATEGY: ddp or ddp_spawn
"""

import functools
import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo, for the spawned or relaunched ranks

from callbacks.attributions import AttributionCallback  # noqa: E402
from callbacks.confusion_matrix import ConfusionMatrixCallback  # noqa: E402
from callbacks.feature_maps import FeatureMapCallback  # noqa: E402
from callbacks.filters import FilterGridCallback  # noqa: E402
from callbacks.misclassified import MisclassifiedCallback  # noqa: E402
from cnn_explorer.data import ImageClassificationDataModule, TensorBatches  # noqa: E402
from cnn_explorer.models import ConvNet  # noqa: E402
from cnn_explorer.module import Classifier  # noqa: E402
from cnn_explorer.sources import SyntheticImages  # noqa: E402


class RecordingBatches(TensorBatches):
    """Remembers every training index this rank fetched, per epoch."""

    seen: list[list[int]] = []

    def __getitem__(self, index: torch.Tensor):
        if len(self) == 800:  # the training split
            RecordingBatches.seen[-1] += index.tolist()
        return super().__getitem__(index)


class NewEpoch(L.Callback):
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        RecordingBatches.seen.append([])


class LocalTrainSums(L.Callback):
    """This rank's own training sums of the epoch, read before the module reduces them over the ranks (a callback's
    on_train_epoch_end runs before the LightningModule's)."""

    def __init__(self) -> None:
        self.sums: dict | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sums = pl_module.train_sums
        self.sums = {"loss": float(sums.loss), "correct": int(sums.correct), "images": sums.images}


class RecordingDataModule(ImageClassificationDataModule):
    def _loader(self, images, labels, sampler):
        loader = super()._loader(images, labels, sampler)
        loader.dataset.__class__ = RecordingBatches
        return loader


def main(out: Path, strategy: str) -> None:
    L.seed_everything(0)
    # 800 training images in 8 batches, 200 validation in 4, 500 test in 10: even shares, no padded duplicates.
    datamodule = RecordingDataModule(
        SyntheticImages(1000, 500, signal=0.3),
        val_size=200,
        batch_size=100,
        eval_batch_size=50,
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )
    module = Classifier(ConvNet([8, "M", 16, "M"], hidden=32), optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    confusion = ConfusionMatrixCallback()
    local_sums = LocalTrainSums()
    callbacks = [
        NewEpoch(),
        local_sums,
        confusion,
        FilterGridCallback(),
        FeatureMapCallback(max_channels=4),
        AttributionCallback(),
        MisclassifiedCallback(k=4),
        ModelCheckpoint(
            out / "checkpoints", "epoch{epoch:03d}", monitor="val/acc", mode="max", auto_insert_metric_name=False
        ),
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=2,
        callbacks=callbacks,
        logger=TensorBoardLogger(str(out), name="", version=""),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=datamodule)
    val_acc = float(trainer.callback_metrics["val/acc"])
    train = {key: float(trainer.callback_metrics[f"train/{key}"]) for key in ("acc", "loss")}
    if trainer.global_rank == 0:
        torch.save(module.net.state_dict(), out / "final_weights.pt")
    trainer.test(module, datamodule=datamodule, verbose=False)  # the final weights: the same as single-process
    record = {
        "rank": trainer.global_rank,
        "train_indices": RecordingBatches.seen,
        "val_acc": val_acc,
        # The last epoch's: this rank's own sums, and the train/acc and train/loss it logged.
        "train_sums": local_sums.sums,
        "train_acc": train["acc"],
        "train_loss": train["loss"],
        "test_acc": float(trainer.callback_metrics["test/acc"]),
        # Under ddp_spawn the ranks ran in spawned processes: this one's callbacks saw nothing.
        "test_confusion": confusion.matrices["test"].tolist() if "test" in confusion.matrices else None,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
