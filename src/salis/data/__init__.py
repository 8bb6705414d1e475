"""Data layer: the synthetic generator, COCO import and validation, and the prepared layout."""
