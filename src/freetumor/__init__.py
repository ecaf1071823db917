"""freetumor: generative tumour synthesis in CT (the FreeTumor method).

Put realistic synthetic tumours into the healthy organs of CT scans, train
segmentation models with them, and evaluate the result.

Example:
    >>> import freetumor
    >>> freetumor.__version__
    '0.1.0'
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import FreeTumorError  # noqa: E402

__all__ = ["FreeTumorError", "__version__"]
