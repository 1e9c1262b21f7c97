import subprocess
import sys


def test_nirs_imports_neither_prefect_nor_storage_nor_test_only_packages():
    code = (
        "import sys, nirs.dataset, nirs.readers, nirs.jcampdx, nirs.datasets, nirs.operators, nirs.splitters, "
        "nirs.config, nirs.metrics, nirs.training, nirs.trace, nirs.replay\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'prefect', 'storage', 'chemotools'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
