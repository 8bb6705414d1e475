"""Stage `annotate@k`: labeled@k and its label store, from the simulated oracle or humans."""

from __future__ import annotations

import pandas as pd

from salis.annotation.cost import CostModel
from salis.artifacts.atomic import write_json
from salis.artifacts.layout import Layout
from salis.artifacts.tables import LABELED, SELECTED, read_table, write_table
from salis.data.prepared import PreparedData
from salis.errors import SalisError
from salis.loop.cycle import add_labeled
from salis.loop.labels import awaiting_message, extend_store, human_batch, read_store, simulated_batch
from salis.params import Params


def stage_annotate(params: Params, layout: Layout, cycle: int) -> pd.DataFrame:
    """Cycle k-1's labeled set plus the batch selected after it.

    Labels come from the simulated oracle, or from humans through `salis labels import`; until
    those exist this stage stops the pipeline with the command to run.
    """
    prepared = PreparedData(layout.prepared)
    batch_cycle = cycle - 1
    selected = read_table(layout.selected(batch_cycle), SELECTED)
    labeled = read_table(layout.labeled(batch_cycle), LABELED)
    store = read_store(layout.annotations(batch_cycle))
    ids = selected["image_id"].tolist()
    if params.oracle == "simulated":
        batch, returned, source = simulated_batch(prepared, ids), [], "simulated_oracle"
    else:
        labels_path = layout.imported_labels(batch_cycle)
        if not labels_path.is_file():
            raise SalisError(awaiting_message(batch_cycle, layout.requests(batch_cycle), labels_path))
        batch, returned = human_batch(labels_path, ids, set(prepared.category_ids))
        source = "human"
    cost = CostModel.from_params(params.cost)
    seconds = {i: cost.image_seconds(len(anns), len(prepared.categories)) for i, anns in batch.items()}
    merged = add_labeled(labeled, selected, set(batch), seconds, cycle, source)
    infos = [prepared.image_info(i) for i in batch]
    write_json(layout.annotations(cycle), extend_store(store, infos, batch))
    write_table(layout.labeled(cycle), merged, LABELED)
    note = f"; {len(returned)} returned to the pool unlabeled" if returned else ""
    print(f"cycle {cycle}: {len(batch)} images labeled by {source}{note}; {len(merged)} labeled in all")
    return merged
