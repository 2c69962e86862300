"""memdistill: distill image datasets into compact, addressable memories."""

__version__ = "0.1.0"
