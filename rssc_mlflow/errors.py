"""The one exception type users see: a message that says what is wrong and what to do."""


class RsscError(Exception):
    """A user-facing error. The CLI prints its message as one paragraph and exits non-zero."""


class DatasetError(RsscError):
    """A dataset is unknown, not prepared, laid out wrongly or damaged."""


class SplitError(RsscError):
    """A split file is unsafe, malformed or does not match its dataset."""


class ModelError(RsscError):
    """A model reference cannot be resolved or a model file is not what it should be."""
