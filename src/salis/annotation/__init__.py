"""Real annotators in the loop: request batches out, validated labels in, and what labels cost.

- cost:     the annotation cost model (seconds per instance / per category checked, an hourly
            rate) and the label-savings comparison against the random sampler.
- export:   a cycle's request batch: COCO (for CVAT) and Label Studio tasks with the model's
            predictions as editable pre-annotations.
- importer: reads a CVAT or Label Studio COCO export back, validates it against the request and
            writes the labels that the next cycle trains on, never overwriting earlier labels.
"""

from salis.annotation.cost import CostModel, instances_per_image, label_savings
from salis.annotation.export import mask_to_polygons, write_request_batch
from salis.annotation.importer import import_labels, read_label_export

__all__ = [
    "CostModel",
    "import_labels",
    "instances_per_image",
    "label_savings",
    "mask_to_polygons",
    "read_label_export",
    "write_request_batch",
]
