"""Stage `prepare`: the dataset, split into pool and test, in the prepared layout."""

from __future__ import annotations

from salis.artifacts.layout import Layout
from salis.data.prepare import prepare_dataset
from salis.params import Params


def stage_prepare(params: Params, layout: Layout) -> dict:
    return prepare_dataset(params.data, layout.prepared)
