"""The one exception type users see: a message that says what is wrong and what to do."""

import signal


class RsscError(Exception):
    """A user-facing error. The CLI prints its message as one paragraph and exits non-zero."""


class DatasetError(RsscError):
    """A dataset is unknown, not prepared, laid out wrongly or damaged."""


class SplitError(RsscError):
    """A split file is unsafe, malformed or does not match its dataset."""


class ModelError(RsscError):
    """A model reference cannot be resolved or a model file is not what it should be."""


class Interrupted(BaseException):
    """SIGTERM (pre-emption: Kubernetes, batch schedulers, `kill`) or SIGINT (Ctrl-C) arrived
    while a run was open. A BaseException like KeyboardInterrupt, so no `except Exception` on
    the way swallows it. `tracked_run` marks the run KILLED; `how_to_continue` says what next."""

    def __init__(self, signum: int):
        self.signal = signal.Signals(signum)
        self.run_id = ""
        self.how_to_continue = ""
        super().__init__(f"interrupted by {self.signal.name}")

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal)  # what a shell reports for a process ended by the signal

    def message(self) -> str:
        run = f": run {self.run_id} is marked KILLED" if self.run_id else ""
        return f"{self.args[0]}{run}. {self.how_to_continue}".strip()
