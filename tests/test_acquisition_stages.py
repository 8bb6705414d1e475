"""infer_score and select as the stages run them (tiny model, untrained): every sampler's inputs
are written whichever sampler is chosen, and every sampler selects from them."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from salis.acquisition.candidates import draw_candidates
from salis.acquisition.embeddings import open_embeddings
from salis.errors import SalisError
from salis.engine.inference import Prediction, embed
from salis.artifacts.layout import Layout
from salis.model.image_features import image_level_features
from salis.params import parse_params
from salis.model.checkpoint import load_model as model_from_checkpoint
from salis.pipeline.annotate import stage_annotate
from salis.pipeline.infer_score import stage_infer_score
from salis.pipeline.init import stage_init
from salis.pipeline.init_model import stage_init_model
from salis.pipeline.prepare import stage_prepare
from salis.pipeline.select import stage_select
from salis.data.prepared import PreparedData
from salis.acquisition.scoring import mc_columns
from support import tiny

ROOT = Path(__file__).resolve().parents[1]
# the tiny project with the loss-prediction module and MC dropout, one cycle, scored untrained
TINY = tiny(
    sampler="random",
    runtime={"threads": 2},
    data={"synthetic": {"pool_images": 8, "test_images": 2, "image_size": 48}},
    model={"detections_per_image": 8, "learning_loss": True, "learning_loss_channels": 8},
    score={"mc_passes": 2, "mask_min_score": 0.3},
    pseudo={"gate": "calibrated"},
    select={"initial": 3},
    cycles={"c1": {"k": 1, "prev": 0, "next": 2}},
)


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> tuple[Layout, object]:
    layout = Layout(tmp_path_factory.mktemp("project"))
    params = parse_params(TINY)
    stage_prepare(params, layout)
    stage_init(params, layout)
    stage_annotate(params, layout, 1)
    stage_init_model(params, layout)
    layout.model(1).parent.mkdir(parents=True)
    shutil.copy(layout.model(0), layout.model(1))  # untrained weights stand in for cycle 1's model
    stage_infer_score(params, layout, 1)
    return layout, params



def copy_project(layout: Layout, root: Path) -> Layout:
    """The scored fixture's data and models in a folder of its own, for a test that rescores them."""
    copy = Layout(root)
    shutil.copytree(layout.root / "data", copy.root / "data")
    shutil.copytree(layout.root / "models", copy.root / "models")
    return copy

def test_infer_score_writes_mc_columns_predicted_loss_and_embeddings_of_the_whole_pool(scored):
    layout, params = scored
    pool = PreparedData(layout.prepared).pool_ids()
    labeled = set(pd.read_parquet(layout.labeled(1))["image_id"])
    images = pd.read_parquet(layout.images(1))
    assert sorted(images["image_id"]) == sorted(set(pool) - labeled)
    assert (images["mc_passes"] == 2).all() and images["predicted_loss"].notna().all()
    instances = pd.read_parquet(layout.instances(1))
    assert len(instances) > 0
    for column in ("mc_class_var", "mc_box_disagreement", "mc_mask_disagreement", "mc_disagreement"):
        assert instances[column].between(0, 1).all(), column
    ids, vectors = open_embeddings(layout.embeddings(1))
    assert sorted(ids.tolist()) == sorted(pool)  # labeled images are embedded too
    assert vectors.shape == (len(pool), 16 * 4) and vectors.dtype == np.float32


def test_labeled_embeddings_come_from_the_same_features_as_the_scored_ones(scored):
    layout, params = scored
    ids, vectors = open_embeddings(layout.embeddings(1))
    model, _ = model_from_checkpoint(layout.model(1))
    unlabeled = pd.read_parquet(layout.images(1))["image_id"].tolist()
    row = {int(i): r for r, i in enumerate(ids)}
    for image_id, vector in embed(model, PreparedData(layout.prepared), unlabeled, 4, torch.device("cpu")):
        np.testing.assert_allclose(vectors[row[image_id]], vector, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampler", ["random", "entropy", "tsp", "beta_iou", "mc_dropout", "coreset", "learning_loss"])
def test_every_sampler_selects_from_the_same_scores(scored, sampler):
    layout, params = scored
    params = dataclasses.replace(params, sampler=sampler)
    batch = stage_select(params, layout, 1)
    labeled = set(pd.read_parquet(layout.labeled(1))["image_id"])
    assert len(batch) == 2 and batch["image_id"].is_unique and (batch["sampler"] == sampler).all()
    assert not set(batch["image_id"]) & labeled


def test_scores_and_embeddings_are_reproducible_with_mc_passes(scored, tmp_path):
    layout, params = scored
    first = {p: p.read_bytes() for p in (layout.instances(1), layout.embeddings(1) / "vectors.npy")}
    stage_infer_score(params, layout, 1)
    for path, content in first.items():
        assert path.read_bytes() == content, path


def test_mc_dropout_is_refused_on_a_pool_scored_without_passes(scored, tmp_path):
    layout, params = scored
    copy = copy_project(layout, tmp_path / "copy")
    no_mc = dataclasses.replace(params, score=dataclasses.replace(params.score, mc_passes=0))
    stage_infer_score(no_mc, copy, 1)
    assert pd.read_parquet(copy.instances(1))["mc_disagreement"].isna().all()
    with pytest.raises(SalisError, match="score.mc_passes = 0"):
        stage_select(dataclasses.replace(no_mc, sampler="mc_dropout"), copy, 1)


def test_mc_columns_combine_the_three_disagreements():
    def pred(**kw) -> Prediction:
        n = 2
        return Prediction(1, np.zeros((n, 4), np.float32), np.ones(n, np.float32), np.ones(n, np.int64),
                          np.zeros((n, 2, 2), bool), np.ones((n, 2), np.float32), np.ones(n, np.float32),
                          np.ones(n, np.float32), **kw)

    cols = mc_columns(pred(mc_class_var=np.array([0.1, 0.0]), mc_box_disagreement=np.array([0.2, 0.0]),
                           mc_mask_disagreement=np.array([0.5, 1.0]), mc_passes=3))
    assert cols["mc_disagreement"].tolist() == pytest.approx([1 - 0.9 * 0.8 * 0.5, 1.0])
    assert np.isnan(mc_columns(pred())["mc_disagreement"]).all()


def test_image_features_average_each_image_over_its_own_area_only():
    fmap = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    # stride 4: image 0 is 16 x 16 (the whole 4 x 4 map), image 1 is 8 x 12 (a 2 x 3 corner)
    pooled = image_level_features({"0": fmap}, [(16, 16), (8, 12)], ["0"])[0]
    assert pooled[0].item() == pytest.approx(fmap[0].mean().item())
    assert pooled[1].item() == pytest.approx(np.mean([16, 17, 18, 20, 21, 22]))
    assert not math.isclose(pooled[1].item(), fmap[1].mean().item())


def test_cycle_one_stays_cached_when_the_sampler_or_select_params_change():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("train", "infer_score"):
        params = stages[name]["do"]["params"]
        assert not [p for p in params if p in ("sampler", "select") or str(p).startswith("select.")], name
    assert "data/cycles/${item.k}/embeddings" in stages["infer_score"]["do"]["outs"]
    assert "data/cycles/${item.k}/embeddings" in stages["select"]["do"]["deps"]


def test_candidates_are_a_seeded_subset_of_the_unlabeled_pool_redrawn_per_cycle():
    pool = list(range(100, 150))[::-1]  # order is kept, the draw ignores it
    drawn = draw_candidates(pool, 10, seed=3, cycle=1)
    assert len(drawn) == 10 and len(set(drawn)) == 10 and set(drawn) <= set(pool)
    assert drawn == [i for i in pool if i in set(drawn)]
    assert drawn == draw_candidates(sorted(pool), 10, seed=3, cycle=1)[::-1]
    assert set(drawn) != set(draw_candidates(pool, 10, seed=3, cycle=2))
    assert set(drawn) != set(draw_candidates(pool, 10, seed=4, cycle=1))
    assert draw_candidates(pool, 0, 3, 1) == pool and draw_candidates(pool, 50, 3, 1) == pool


def test_infer_score_with_candidates_scores_only_them_and_select_picks_among_them(scored, tmp_path):
    layout, params = scored
    copy = copy_project(layout, tmp_path / "copy")
    subset = dataclasses.replace(params, score=dataclasses.replace(params.score, candidates=3))
    stage_infer_score(subset, copy, 1)
    pool = PreparedData(copy.prepared).pool_ids()
    labeled = set(pd.read_parquet(copy.labeled(1))["image_id"])
    unlabeled = [i for i in pool if i not in labeled]
    scored_ids = pd.read_parquet(copy.images(1))["image_id"].tolist()
    assert scored_ids == draw_candidates(unlabeled, 3, subset.seed, 1) and len(scored_ids) == 3
    assert set(pd.read_parquet(copy.instances(1))["image_id"]) <= set(scored_ids)
    ids, _ = open_embeddings(copy.embeddings(1))
    assert sorted(ids.tolist()) == sorted(set(scored_ids) | labeled)  # core-set still sees the labeled set
    for sampler in ("random", "tsp", "coreset"):
        batch = stage_select(dataclasses.replace(subset, sampler=sampler), copy, 1)
        assert len(batch) == 2 and set(batch["image_id"]) <= set(scored_ids), sampler


def test_candidates_below_the_batch_are_refused():
    with pytest.raises(SalisError, match=r"score.candidates \(10\) is below select.budget \(20\)"):
        parse_params({"score": {"candidates": 10}})
    with pytest.raises(SalisError, match="score.candidates must be >= 0"):
        parse_params({"score": {"candidates": -1}})


@pytest.mark.parametrize("mc_passes", [0, 2])
def test_a_mask_floor_changes_no_score_no_selection_and_no_pseudo_label(scored, tmp_path, mc_passes):
    """Scoring with score.mask_min_score keeps every score (the mask-IoU head reads RoI features,
    not masks), the same masks for detections at or above the floor and none below it; so every
    sampler picks the same images and pseudo-labels come out the same bytes. mc_passes 0 runs the
    mask head on the kept detections only; MC dropout runs it on all (it compares masks)."""
    from salis.loop.cycle import pseudo_labels

    layout, params = scored
    floor = float(np.median(pd.read_parquet(layout.instances(1))["score"]))  # about half kept
    runs = {}
    for name, mask_min_score in (("all", 0.0), ("floor", floor)):
        project = copy_project(layout, tmp_path / name)
        run_params = dataclasses.replace(
            params, score=dataclasses.replace(params.score, mc_passes=mc_passes, mask_min_score=mask_min_score),
            pseudo=dataclasses.replace(params.pseudo, score_thresh=floor, box_iou_thresh=0.0, mask_iou_thresh=0.0))
        stage_infer_score(run_params, project, 1)
        selected = {}
        for sampler in ("random", "entropy", "tsp", "beta_iou", "coreset", "mc_dropout") if mc_passes else ("tsp",):
            stage_select(dataclasses.replace(run_params, sampler=sampler), project, 1)
            selected[sampler] = project.selected(1).read_bytes()
        # what pseudo_label@2 reads: model 1's detections above the gate (here c > floor)
        runs[name] = (project, selected, pseudo_labels(project.instances(1), frozenset(), floor))
    (all_masks, all_selected, all_pseudo), (floored, floor_selected, floor_pseudo) = runs["all"], runs["floor"]
    assert all_masks.images(1).read_bytes() == floored.images(1).read_bytes()
    assert floor_selected == all_selected
    pd.testing.assert_frame_equal(floor_pseudo, all_pseudo)
    assert len(floor_pseudo) > 0
    full, part = pd.read_parquet(all_masks.instances(1)), pd.read_parquet(floored.instances(1))
    mask_columns = ["area", "rle"]
    pd.testing.assert_frame_equal(full.drop(columns=mask_columns), part.drop(columns=mask_columns))
    above = (full["score"] >= floor).to_numpy()
    assert 0 < above.sum() < len(full) and full["rle"].notna().all()
    pd.testing.assert_frame_equal(full.loc[above, mask_columns], part.loc[above, mask_columns], check_dtype=False)
    assert part.loc[~above, "rle"].isna().all() and part.loc[~above, "area"].isna().all()


def test_readers_of_masks_below_the_floor_are_refused():
    with pytest.raises(SalisError, match=r"pseudo.score_thresh \(0.2\) reads masks .* score.mask_min_score \(0.3\)"):
        parse_params({"pseudo": {"gate": "fixed", "score_thresh": 0.2}})
    parse_params({"pseudo": {"gate": "calibrated", "score_thresh": 0.2}})  # a calibrated gate starts at the floor
    with pytest.raises(SalisError, match=r"annotation.pre_annotation_score \(0.1\) reads masks"):
        parse_params({"annotation": {"pre_annotation_score": 0.1}})
    with pytest.raises(SalisError, match=r"select.min_score \(0.0\) reads masks"):
        parse_params({"sampler": "oracle_iou"})
    parse_params({"sampler": "oracle_iou", "score": {"mask_min_score": 0.0}})  # every mask kept
    with pytest.raises(SalisError, match=r"score.mask_min_score must lie in \[0, 1\]"):
        parse_params({"score": {"mask_min_score": 1.5}})
