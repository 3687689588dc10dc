"""The report's sections, in the order the report shows them: one module per view (see
:mod:`cnn_explorer.report.section` for what a section module holds)."""

from __future__ import annotations

from cnn_explorer.report.sections import (
    attributions,
    confusions,
    feature_maps,
    features,
    filters,
    learning_curves,
    mistakes,
    overview,
    test_accuracy,
)

SECTIONS = (
    overview,
    learning_curves,
    test_accuracy,
    confusions,
    mistakes,
    filters,
    feature_maps,
    features,
    attributions,
)
