"""The serverless entry point: ``jobs.serverless.handler`` (AWS Lambda or alike).

The handler itself, its events and its rules are in :mod:`maskcore.serverless`.
"""

from maskcore.serverless import handler

__all__ = ["handler"]
