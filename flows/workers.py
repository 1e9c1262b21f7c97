"""How many threads a flow's task runner gets: one number for every flow."""

from __future__ import annotations

import os

#: Threads of a flow's task runner, and the workers an executor gets when the run names
#: none (``nirs.executors``): ``cores - 1``, and at least two. The train flow runs its
#: pipeline tasks on a pool of its own (``max_concurrency``) and fits their folds on an
#: executor; issue 4's figures for fold *tasks* on threads (a task run costs ~20-36 ms of
#: CPU, client and server) are why there are no fold tasks any more. Scoring
#: (flows/score_inbox.py) shares the number: its tasks read, replay and write with numpy,
#: scikit-learn and polars, which release the GIL, so they would use every core, but the
#: flow-run thread moves files, writes the store and talks to Prefect meanwhile, and on
#: two cores both formulas give two.
DEFAULT_WORKERS = max(2, (os.cpu_count() or 2) - 1)
