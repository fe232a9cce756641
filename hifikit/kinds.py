"""Every step kind a job can be made of, by name: the one registry ``jobs`` looks kinds up in.

A step kind is a function ``(StepContext, spec) -> StepOutput`` (jobs.py). The
name is stored with each step in the runs database, so ``hifikit runs resume``
finds the function again; a name must therefore never change once a release
has written it. Adding a kind is one line here: nothing registers itself by
being imported.
"""
from __future__ import annotations

from . import costs_job, demo, publish, steps
from .jobs import StepFn
from .sweep import steps as sweep_steps

STEP_KINDS: dict[str, StepFn] = {
    # the bundled tools (steps.py)
    "quantize": steps.quantize,
    "imatrix": steps.imatrix,
    "kld-base": steps.kld_base,
    "eval": steps.evaluate,
    "bench": steps.bench,
    "calib": steps.calib_build,
    "fetch": steps.fetch,
    "convert": steps.convert,
    # the sweep (sweep/steps.py)
    "sweep-proxy": sweep_steps.sweep_proxy,
    "sweep-measured": sweep_steps.sweep_measured,
    "knees": sweep_steps.knees,
    # the speed cost model (costs_job.py)
    "costs-measure": costs_job.measure_step,
    "costs-constant": costs_job.constant_step,
    # the demo (demo.py)
    "demo-source": demo.source_step,
    "demo-text": demo.text_step,
    "demo-degrid": demo.degrid_step,
    "demo-plan-quantize": demo.plan_quantize_step,
    "demo-recipe-quantize": demo.recipe_quantize_step,
    "demo-costs": demo.costs_step,
    # hifikit publish (publish.py)
    "publish-card": publish.card_step,
    "publish-repo": publish.repo_step,
    "publish-upload": publish.upload_step,
}
