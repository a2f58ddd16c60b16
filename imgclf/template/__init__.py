"""The pipeline as shipped, the demo project: the dvc.yaml and params.yaml that tests and benchmarks build from.

The project's own dvc.yaml and params.yaml start as copies of these, and then belong to the user
(`python -m imgclf.own_data`, tuned params); tests and benchmarks never read those, so that they run
the same in any workspace. tests/unit/test_template.py checks that the root files still match.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
PIPELINE = HERE / "pipeline.yaml"  # the shipped dvc.yaml (not named dvc.yaml: DVC would collect it)
PARAMS = HERE / "params.yaml"
