"""The detection task: boxes (and instance masks) in, a torchvision detector, COCO mAP out.

    sources.py   where the annotated images come from (Penn-Fudan, a COCO-JSON or Pascal-VOC folder, synthetic)
    data.py      the DataModule: resize, a seeded train/val split with a fixed test split, flips on the batch
    models.py    the detector: Faster R-CNN with an FPN on EfficientNet-Lite0's ImageNet features
    module.py    the LightningModule: the detector's summed losses, mAP per epoch
    analysis.py  matches at IoU 0.5, the PR curve, false positives, missed objects, the threshold table

Importing the package registers its sources, DataModule and detector with the run-dir allowlist
(:func:`~cnn_explorer.safe_config.buildable`): a resumed or analyzed detection run names them.
"""

from cnn_explorer.detection import data, models, sources  # noqa: F401  (registers the buildable classes)
