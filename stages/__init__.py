"""One thin script per pipeline stage; dvc.yaml runs each as `python -m stages.<name>` (see docs/pipeline.md)."""
