"""The stage entry point: a user's error in one line (exit 2), Ctrl-C in one line (exit 130), a quick exit when done."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable

from imgclf.errors import PipelineError


def stage_main(main: Callable[[], None] | None = None, *, interrupted: str = "rerun it to start again") \
        -> Callable[[], None] | Callable[[Callable[[], None]], Callable[[], None]]:
    """Wrap a stage's main(): a PipelineError prints `error: ...` and exits 2; Ctrl-C prints one line, exits 130.

    Used bare (`@stage_main`) or with the sentence that tells the user what rerunning does
    (`@stage_main(interrupted="...")`). Nothing is half-written either way: every artifact is written
    to a temporary file and renamed into place, and an interrupted write removes its temporary file.
    After a clean finish of the program's own main() the process leaves at once (leave_now).
    """

    def decorate(function: Callable[[], None]) -> Callable[[], None]:
        @functools.wraps(function)
        def wrapper() -> None:
            try:
                function()
            except PipelineError as err:
                # One line naming the file or key; the traceback would only bury it. Under torchrun
                # every process meets the same error: rank 0 alone says it.
                if _is_main_process():
                    print(f"error: {err}{recovery_hint()}", file=sys.stderr)
                sys.exit(2)
            except KeyboardInterrupt:
                stage = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "stage"
                if _is_main_process():
                    print(f"\ninterrupted: stage {stage} stopped by Ctrl-C; nothing was left half-written; "
                          f"{interrupted}{recovery_hint()}", file=sys.stderr)
                sys.exit(130)  # 128 + SIGINT, as shells report it
            if getattr(sys.modules.get("__main__"), "main", None) is wrapper:
                leave_now()

        return wrapper

    return decorate(main) if main is not None else decorate


def leave_now(code: int = 0) -> None:
    """End the process after a clean finish without tearing down what the OS will: flush, then `os._exit`.

    Only when the stage runs as the program (`python -m stages.<name>`, the `imgclf-predict` command),
    never when a test calls main(). Every artifact is already whole on disk (written to a temporary file,
    renamed); what remains is the interpreter's own shutdown, which after torch takes ~0.7 s of
    garbage collection and module teardown for nothing. Child processes still running (workers of a
    pool nobody closed) are terminated first, so that they cannot hold DVC's pipes open.
    """
    multiprocessing = sys.modules.get("multiprocessing")  # not imported: no children to end
    for child in multiprocessing.active_children() if multiprocessing else ():
        child.terminate()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing more can be said through it
            pass
    os._exit(code)


def recovery_hint() -> str:
    """Under `dvc repro` / `dvc exp run`, the clause that says how to get back the outputs DVC deleted; else "".

    DVC deletes a stage's outputs before it runs the stage (unless they are `persist: true`), so a
    stage that fails has lost them although it wrote nothing. dvc.lock still describes the last
    successful run, so `dvc checkout` brings back its cached outputs, all consistent with each other
    (model.pt and the model.onnx exported from it), and git has the ones it tracks (reports, dvclive).
    DVC sets DVC_STAGE for every stage command it runs.
    """
    stage = os.environ.get("DVC_STAGE")
    if not stage:
        return ""
    cached, in_git = stage_outputs(Path(os.environ.get("DVC_ROOT", ".")) / "dvc.yaml", stage)
    if cached and in_git:
        how = f"`dvc checkout {stage}` restores {' '.join(cached)} from DVC's cache, and `git restore " \
              f"{' '.join(in_git)}` the rest"
    elif in_git:
        how = f"`git restore {' '.join(in_git)}` restores them"
    else:
        how = f"`dvc checkout {stage}` restores them from DVC's cache"
    return f" (DVC removed this stage's previous outputs before running it: {how})"


def stage_outputs(dvc_yaml: Path, stage: str) -> tuple[list[str], list[str]]:
    """`stage`'s outputs in `dvc_yaml`: (those in DVC's cache, those with `cache: false`, which git keeps).

    ([], []) when dvc.yaml cannot be read: an error message must never fail.
    """
    try:
        import yaml

        outs = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"][stage].get("outs", [])
        paths = [(out, True) if isinstance(out, str) else (next(iter(out)), next(iter(out.values())).get("cache", True))
                 for out in outs]
    except Exception:
        return [], []
    return [p for p, cache in paths if cache is not False], [p for p, cache in paths if cache is False]


def _is_main_process() -> bool:
    """False in the processes of rank > 0 that torchrun starts (RANK is set by it)."""
    return os.environ.get("RANK", "0") == "0"
