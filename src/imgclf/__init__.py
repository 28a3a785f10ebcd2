"""imgclf: a DVC pipeline that fine-tunes a keras.applications backbone on labelled images."""

__version__ = "0.1.0"
