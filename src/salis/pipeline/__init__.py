"""The top layer: one module per DVC stage, each a function (params, layout[, cycle]) that
the thin scripts in stages/ call through runner.run_stage.

A stage module imports only what its stage uses, so that the source files a stage's process
loads are exactly those its dvc.yaml deps name (checked by tests/test_dvc_deps.py).
"""
