"""Stage `pretrain`: the backbone trained self-supervised on the unlabeled pool (salis.pretrain),
once per dataset and backbone (the run's seed is not among its params, so every seed of a grid
reuses it from DVC's cache). Disabled, it writes only a summary saying so, and init_model starts
from random or model.weights as before."""

from __future__ import annotations

from salis.artifacts.atomic import atomic_dir, ensure_space, torch_bytes, write_json
from salis.artifacts.layout import Layout
from salis.data.prepared import PreparedData
from salis.engine.device import configure_runtime, pick_device
from salis.params import Params


def stage_pretrain(params: Params, layout: Layout) -> dict:
    configure_runtime(params.runtime)
    settings = params.pretrain
    summary: dict = {"enabled": settings.enabled}
    if not settings.enabled:
        with atomic_dir(layout.pretrain) as tmp:
            write_json(tmp / layout.pretrain_summary.name, summary)
        write_json(layout.pretrain_metrics, {"enabled": False, "seconds": 0.0})
        return summary
    from salis.pretrain.train import pretrain_body  # imports lightly (seconds): only when pretraining

    prepared = PreparedData(layout.prepared)
    ids = prepared.pool_ids()  # the pool only: the test split never reaches training
    print(f"pretrain: {settings.method} on {len(ids)} unlabeled pool images, {params.model.backbone}, "
          f"{settings.epochs} epochs of {min(settings.batch_size, len(ids))}-image batches")
    result = pretrain_body(prepared.load_image, ids, settings, params.model.backbone, pick_device(params.runtime.device))
    body = torch_bytes(result.body_state)  # same weights, same bytes
    ensure_space(layout.pretrained_backbone, len(body))
    summary.update(method=settings.method, backbone=params.model.backbone, images=len(ids), epochs=settings.epochs,
                   steps=result.steps, epoch_losses=[round(x, 6) for x in result.epoch_losses],
                   epoch_output_std=[round(x, 6) for x in result.epoch_output_std],
                   healthy_output_std=round(result.output_dim ** -0.5, 6))
    with atomic_dir(layout.pretrain) as tmp:
        (tmp / layout.pretrained_backbone.name).write_bytes(body)
        write_json(tmp / layout.pretrain_summary.name, summary)
    write_json(layout.pretrain_metrics, {"enabled": True, "seconds": round(result.seconds, 1),
                                         "final_loss": round(result.epoch_losses[-1], 6),
                                         "final_output_std": round(result.epoch_output_std[-1], 6)})
    print(f"pretrain: loss {result.epoch_losses[0]:.3f} -> {result.epoch_losses[-1]:.3f}, output spread "
          f"{result.epoch_output_std[-1]:.3f} (collapsed: 0, healthy: about {result.output_dim ** -0.5:.3f}), "
          f"in {result.seconds:.0f} s")
    return summary
