"""A 3-process DDP run on the CPU (gloo) whose evaluation batches do not divide between the processes, as its own
script (Lightning's DDP launcher starts the script again for ranks 1 and 2). Writes what each rank evaluated and
the metrics it got to <out>/rank<r>.json, and the final weights to <out>/final_weights.pt.

    python tests/scripts/ddp_uneven.py OUT_DIR

200 validation images in batches of 33 are 7 batches on one process (ranks: 66, 67, 67 images: 2, 3, 3 batches);
499 test images are 16 batches (ranks: 166, 166, 167 images: 6 batches each). Lightning's own sampler would pad
both to 9 and 18 batches with repeated ones.
"""

import functools
import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo, for the relaunched ranks

from callbacks.confusion_matrix import ConfusionMatrixCallback  # noqa: E402
from callbacks.schedule import ViewSchedule  # noqa: E402
from cnn_explorer.data import ImageClassificationDataModule  # noqa: E402
from cnn_explorer.models import ConvNet  # noqa: E402
from cnn_explorer.module import Classifier  # noqa: E402
from cnn_explorer.sources import SyntheticImages  # noqa: E402

WORLD = 3
# Shared with tests/test_ddp.py, which builds the same data in one process.
DATA = {"val_size": 200, "eval_batch_size": 33, "mean": [0.5] * 3, "std": [0.25] * 3}
SOURCE = {"train_size": 1100, "test_size": 499, "signal": 0.5}


def net() -> ConvNet:
    return ConvNet([8, "M", 16, "M"], hidden=32)


def main(out: Path) -> None:
    L.seed_everything(0)
    datamodule = ImageClassificationDataModule(SyntheticImages(**SOURCE), batch_size=50, **DATA)
    module = Classifier(net(), optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    confusion = ConfusionMatrixCallback()  # gathers its counts from ranks that ran different numbers of batches
    trainer = L.Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy="ddp",
        max_epochs=1,
        callbacks=[ViewSchedule(), confusion],  # ViewSchedule logs time/views_s on every rank
        logger=TensorBoardLogger(str(out), name="", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=datamodule)
    record = {
        "rank": trainer.global_rank,
        "val_indices": [t.tolist() for t in trainer.val_dataloaders.sampler],
        "val_acc": float(trainer.callback_metrics["val/acc"]),
        "val_loss": float(trainer.callback_metrics["val/loss"]),
        "val_confusion_total": int(confusion.matrices["val"].sum()),
    }
    if trainer.global_rank == 0:
        torch.save(module.net.state_dict(), out / "final_weights.pt")
    trainer.test(module, datamodule=datamodule, verbose=False)  # the final weights, as the single-process check
    record |= {
        "test_indices": [t.tolist() for t in trainer.test_dataloaders.sampler],
        "test_acc": float(trainer.callback_metrics["test/acc"]),
        "test_loss": float(trainer.callback_metrics["test/loss"]),
        "test_confusion_total": int(confusion.matrices["test"].sum()),
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
