"""One type per tensor under an exact byte budget, and what a plan is compared against.

Contract. Input: a sweep (``hifikit.sweep.curves.Sweep``: per tensor, each
candidate type's bytes and error), the model's layout (``filesize.FileLayout``)
and a target for the size of the *whole* output file. Output: a ``plan.Plan``
(one type per tensor, the predicted file bytes, exact to the byte, and the
predicted error) and its strategy file (strategy.py), which ``llama-quantize``
applies through ``--tensor-type-file`` and which is checked against the written
file. The planner never runs the model: it adds the sweep's errors up.

filesize.py computes the size of the file ``llama-quantize`` writes,
allocate.py solves the multiple-choice knapsack, plan.py turns a sweep and a
target into a plan, strategy.py reads, writes and checks strategy files,
recipes.py and baselines.py price the simple recipes and stock files a plan
is compared with, speed.py makes the speed budget from the stored cost model,
front.py plans a grid of byte budgets x speed limits and keeps the Pareto
front, plots.py draws a plan and a front.
"""
