"""The outputs of the worker: the result file."""
