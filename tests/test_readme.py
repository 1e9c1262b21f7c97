"""The README's promise: its test command is exactly what CI runs, and its main job runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands():
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    return blocks[0].strip(), blocks[1].strip()


def test_ci_runs_the_readme_test_command():
    _, test_command = _commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in [line.strip() for line in ci]


def test_readme_main_job_is_the_demo():
    main_job, _ = _commands()
    assert main_job == "pip install -e . && nirsflow demo"


def test_demo_runs_end_to_end_and_prints_the_leaderboard(demo_run):
    workspace, done = demo_run
    assert "Leaderboard" in done.stdout and "Production chain for 'tablet'" in done.stdout
    rmse = float(re.search(r"replayed on the test set: RMSE ([0-9.]+)", done.stdout).group(1))
    assert 1.5 < rmse < 3.0  # SNV/MSC/SG + PLS on Tablet: about 2.2-2.4
    assert (workspace / "store.duckdb").is_file()


def test_readme_config_example_is_a_valid_config(tmp_path):
    from nirs.config import count_pipelines, load_config, validate

    text = re.search(r"```yaml\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S).group(1)
    (tmp_path / "grid.yaml").write_text(text)
    config = load_config(tmp_path / "grid.yaml")
    assert count_pipelines(config) == 9
    assert len(validate(config)) == 9
