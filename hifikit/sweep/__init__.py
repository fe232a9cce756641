"""Per-tensor error curves of one model: what each candidate type costs and how much error it adds.

Contract. A sweep measures, for every tensor ``llama-quantize`` would quantize,
each candidate type's exact byte size and its error, and stores them as curve
points of one run in the runs database (``curves.py``: ``sweep_tensors`` and
``curve_points``). ``curves.load_sweep(conn, run_id, mode)`` returns them as a
``curves.Sweep``, the one thing the planner reads. Within one mode a point's
``error`` is the tensor's contribution to the model's error in one unit for
every tensor, so errors add up across tensors:

- ``proxy`` (proxy.py): the importance-weighted relative squared error of the
  tensor's quantize -> dequantize image through the built libggml;
- ``measured`` (measured.py): the model's mean KL divergence against the
  reference with only this tensor quantized (``llama-sensitivity``);
- ``calibrated`` (objective.py): the proxy scaled per tensor by measured points.

knee.py fits each curve and finds its knee, agreement.py compares the modes'
rankings, plots.py draws the curves, steps.py holds the steps of the sweep
job. Nothing here chooses types for a file: that is the planner's job.
"""
