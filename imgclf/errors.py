"""Errors a user can fix (bad params, bad data) and the stage entry point that reports them in one line."""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from multiprocessing.pool import Pool


class PipelineError(Exception):
    """An error caused by the user's input: reported as one line, never as a traceback."""


class ConfigError(PipelineError):
    """A missing, unknown, mistyped or out-of-range key in params.yaml."""


class DataError(PipelineError):
    """Input data that the pipeline cannot use: a missing folder, an empty class, a bad checkpoint."""


class TrainingError(PipelineError):
    """A training run whose result must not be used: a model that learned nothing."""


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


def ignore_interrupts() -> None:
    """Worker-process initializer: Ctrl-C reaches the whole process group; only the stage's main process
    handles it (one line, exit 130), the workers are then terminated, without tracebacks of their own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_pool(workers: int) -> Pool:
    """A pool of `workers` forked processes that ignore Ctrl-C, safe against a Ctrl-C while it starts.

    Ctrl-C is held back while Pool() forks its workers: one arriving in the middle (it takes a
    moment on a loaded machine) would leave the workers forked so far orphaned and alive, holding the
    terminal's pipes, with no pool object for the caller to terminate. A Ctrl-C held back is raised
    when it is let through (CPython checks signals as pthread_sigmask returns): the pool is then
    terminated and the KeyboardInterrupt goes on to the stage's handler.
    """
    import multiprocessing

    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=ignore_interrupts)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        raise
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    except BaseException:
        pool.terminate()
        raise
    return pool
