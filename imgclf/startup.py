"""A stage's start-up: import in a background thread the libraries it needs only later, while it works.

The train stage needs scikit-learn (validation F1) and DVCLive only after its first epoch; imported
before training, they would delay the first step by ~1 s. Imported by a thread while the first epoch
runs, they cost the main thread almost nothing: torch's kernels release the GIL.
"""

from __future__ import annotations

import importlib
import threading


def preload(*modules: str) -> threading.Thread:
    """Start importing `modules` in a background thread; return it (join it to wait).

    An import that fails here is left for the main thread's own import to raise, where and when the
    module is needed, with its usual message. Python's per-module import locks make a module
    imported by both threads load once, the main thread waiting for it if it comes second.
    """

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # raised again, with its message, by the main thread's import
                pass

    thread = threading.Thread(target=run, name="preload")
    thread.start()
    return thread
