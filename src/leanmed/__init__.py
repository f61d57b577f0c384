"""leanmed: what resource-efficient training costs and saves for medical image classifiers."""

__version__ = "0.1.0"
