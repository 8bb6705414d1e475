"""Real annotators in the loop: request batches out, validated labels in, and what labels cost.

- cost:     the annotation cost model (seconds per instance / per category checked, an hourly
            rate) and the label-savings comparison against the random sampler.
- export:   a cycle's request batch: COCO (for CVAT) and Label Studio tasks with the model's
            predictions as editable pre-annotations.
- importer: reads a CVAT or Label Studio COCO export back, validates it against the request and
            writes the labels that the next cycle trains on, never overwriting earlier labels.

No re-exports here: a stage that needs the cost model must not load the importer too.
"""
