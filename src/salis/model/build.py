"""Build the Mask R-CNN from params: a compact CPU default, ResNet-50-FPN for GPUs."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from salis.model.detector import SalisMaskRCNN
from salis.model.heads import BoxSupervision, RoIHeadsParts
from salis.model.iou_heads import IoUHeads, IoUTraining
from salis.model.learning_loss import LossPredictionModule
from salis.model.resnets import resnet_body, stage_channels
from salis.params import ModelParams

_LEVELS = ["0", "1", "2", "3"]


def build_backbone(params: ModelParams) -> BackboneWithFPN:
    """ResNet body plus FPN."""
    in_channels = stage_channels(params.backbone)
    norm_layer = FrozenBatchNorm2d if params.norm == "frozen" else nn.BatchNorm2d
    body = resnet_body(params.backbone, norm_layer)
    return BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=in_channels,
        out_channels=params.fpn_channels,
    )


def iou_training(params: ModelParams) -> IoUTraining:
    return IoUTraining(
        mask_threshold=params.iou_mask_threshold,
        loss_weight=params.iou_loss_weight,
        jitter_rois=params.iou_jitter_rois,
        jitter_min_iou=params.iou_jitter_min_iou,
        background_rois=params.iou_background_rois,
        gt_proposals=params.iou_gt_proposals,
    )


def build_roi_parts(params: ModelParams, box_supervision: BoxSupervision | None = None) -> RoIHeadsParts:
    """salis's additions to the RoI heads: IoU heads, loss-prediction module, training dropout, and
    BoxInst's loss weights for box-labeled images (a training setting: train.box_*)."""
    channels = params.fpn_channels
    iou = (
        IoUHeads.build(channels, params.iou_head_channels, iou_training(params))
        if params.iou_heads
        else None
    )
    loss_prediction = (
        LossPredictionModule(
            channels, len(_LEVELS), params.learning_loss_channels, params.learning_loss_margin, params.learning_loss_weight
        )
        if params.learning_loss
        else None
    )
    return RoIHeadsParts(iou=iou, loss_prediction=loss_prediction, train_dropout_p=params.train_dropout_p,
                         box_supervision=box_supervision or BoxSupervision())


def build_model(params: ModelParams, num_classes: int, box_supervision: BoxSupervision | None = None) -> SalisMaskRCNN:
    """Mask R-CNN with `num_classes` foreground classes (plus background); box_supervision: the
    BoxInst loss weights training uses on box-labeled images (default: train.box_*'s defaults)."""
    # Modules are created in a fixed order, torchvision's before salis's: the order decides which
    # random numbers initialise each, so a seed keeps giving the weights it gave before.
    backbone = build_backbone(params)
    channels = params.fpn_channels
    anchors = AnchorGenerator(
        sizes=tuple((size,) for size in params.anchor_sizes),
        aspect_ratios=((0.5, 1.0, 2.0),) * len(params.anchor_sizes),
    )
    rpn_head = RPNHead(channels, anchors.num_anchors_per_location()[0])
    box_head = TwoMLPHead(channels * 7 * 7, params.box_head_dim)
    box_predictor = FastRCNNPredictor(params.box_head_dim, num_classes + 1)
    mask_layers = [params.mask_head_channels] * params.mask_head_convs
    mask_head = MaskRCNNHeads(channels, mask_layers, dilation=1)
    mask_predictor = MaskRCNNPredictor(mask_layers[-1], params.mask_head_channels, num_classes + 1)
    parts = build_roi_parts(params, box_supervision)
    return SalisMaskRCNN(
        backbone,
        num_classes=None,
        parts=parts,
        min_size=params.min_size,
        max_size=params.max_size,
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=params.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=params.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=params.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=params.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=params.rpn_batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(_LEVELS, output_size=7, sampling_ratio=2),
        box_head=box_head,
        box_predictor=box_predictor,
        box_batch_size_per_image=params.box_batch_size_per_image,
        box_detections_per_img=params.detections_per_image,
        box_score_thresh=params.box_score_thresh,
        mask_roi_pool=MultiScaleRoIAlign(_LEVELS, output_size=14, sampling_ratio=2),
        mask_head=mask_head,
        mask_predictor=mask_predictor,
    )


def seeded_model(params: ModelParams, num_classes: int, seed: int) -> SalisMaskRCNN:
    """The same seed gives the same initial weights, byte for byte."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(params, num_classes)
