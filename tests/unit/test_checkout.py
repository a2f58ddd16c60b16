"""The processes a test starts run this checkout's code, whatever `imgclf` the venv has installed."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, sh


def test_a_subprocess_imports_this_checkout_before_anything_installed(tmp_path):
    # A decoy where an install of another checkout would be: on the path after the tests' own entries.
    decoy = tmp_path / "site" / "imgclf"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise ImportError('the decoy imgclf, not the checkout under test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.environ["PYTHONPATH"], str(decoy.parent)])}
    done = subprocess.run([sys.executable, "-c", "import imgclf, stages; print(imgclf.__file__, stages.__file__)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert [Path(p).parent.parent for p in done.stdout.split()] == [ROOT, ROOT]


def test_a_stage_started_as_a_script_from_another_folder_runs_this_checkout(tmp_path):
    """`python stages/X.py` puts stages/ first on sys.path, not the repository: imgclf comes from PYTHONPATH."""
    probe = tmp_path / "probe.py"
    probe.write_text("import imgclf.errors; print(imgclf.errors.__file__)\n")
    done = sh([sys.executable, str(probe)], tmp_path)
    assert Path(done.stdout.strip()) == ROOT / "imgclf" / "errors.py"
