"""Exceptions shared by every stage."""


class NeurodeployError(ValueError):
    """Invalid user input: a spec, a corpus, a checkpoint or an option.

    The message names the value and the fix. The command line reports it
    without a traceback and exits with status 2.
    """
