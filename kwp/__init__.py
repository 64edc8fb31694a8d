"""kwp: a webhooks proxy on Twisted."""

__version__ = "0.1.0"
