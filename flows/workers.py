"""How many threads a flow's task runner gets: one number for every flow."""

from __future__ import annotations

import os

#: Fold tasks run on ``cores - 1`` threads, and on at least two; their fits run in the
#: flow process unless the run asks for ``processes``. Measured on 2 cores
#: (bench/flow_bench.py, PLS grid on Tablet, ~20 ms a fit, wall time of the run, medians of
#: 3). With Prefect's default server one fold thread took 5.3 s, two 7.3 s: the server's
#: per-task-run work (it recorded each task run on its own) starved the second. With
#: nirsflow's server settings (flows/server.py, batched recording) two threads win: 4.2 s
#: against 5.2 s one session, 6.3 s against 7.3 s on a slower day (flow-run bodies 3.65
#: against 3.9 s; the rest is the run's start and end, up to 1 s of it Prefect's
#: heartbeat). The flow stays bound by Prefect's per-task work, in this process and in
#: the server's. Worker processes (``nirs.parallel``) pay off for slow fits: a
#: random-forest grid (~150 ms a fit) ran in 4.3-5.3 s instead of 6.2-6.35 s, and the PLS
#: grid in 4.3-5.3 s. They need as many fold threads as processes:
#: ``train.with_options(task_runner=ThreadPoolTaskRunner(n))(..., processes=n)``, which is
#: what ``nirsflow train --processes n`` runs. Prefect's ProcessPoolTaskRunner costs
#: ~350 ms per fold task here: it runs the whole task engine in the child.
#: Scoring (flows/score_inbox.py) shares the number: its tasks read, replay and write
#: with numpy, scikit-learn and polars, which release the GIL, so they would use every
#: core, but the flow-run thread moves files, writes the store and talks to Prefect
#: meanwhile, and on two cores both formulas give two.
DEFAULT_WORKERS = max(2, (os.cpu_count() or 2) - 1)
