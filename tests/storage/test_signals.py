"""SIGTERM arriving during a store call is delivered once the call has ended
(storage/signals.py): the call's transaction commits whole, and the process still stops."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from storage import WorkspaceStore

SCRIPT = textwrap.dedent("""
    import signal, sys
    import numpy as np
    from storage import WorkspaceStore

    def stop(signum, frame):  # as Prefect does in a flow-run process
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, stop)
    store = WorkspaceStore(sys.argv[1])
    pipeline_id = store.begin_pipeline(store.begin_run("r"), "p", None, [], "d")
    x = np.linspace(0.0, 1.0, 100)
    with store.batch():
        print("in the batch", flush=True)
        for i in range(int(sys.argv[2])):
            store.save_prediction(pipeline_id, val_score=float(i), y_true=x, y_pred=x)
    print("after the batch", flush=True)
""")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_during_a_batch_lets_it_commit_then_stops_the_process(tmp_path):
    ws, n = tmp_path / "ws", 40_000
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(ws), str(n)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "in the batch"
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 143  # the handler ran: the process stopped ...
    assert "after the batch" not in rest  # ... right after the call, not later
    with WorkspaceStore(ws) as store:  # ... and the batch it interrupted landed whole
        assert store.query_predictions().height == n
