"""User-facing errors.

Anything the user can cause (a wrong name, a missing folder, a corrupt file, a NaN loss)
raises :class:`BenchError`. The CLI turns it into one line on stderr and a non-zero exit,
never a traceback. Exit codes: 2 for bad input/usage, 3 for data problems, 4 for training
failures (NaN loss ...), 5 for tracking/storage problems.
"""


class BenchError(Exception):
    exit_code = 2


class UsageError(BenchError):
    exit_code = 2


class DataError(BenchError):
    exit_code = 3


class TrainingError(BenchError):
    exit_code = 4


class TrackingError(BenchError):
    exit_code = 5
