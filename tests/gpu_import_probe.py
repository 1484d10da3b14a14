"""Reads CUDA_VISIBLE_DEVICES when imported, as a GPU library choosing its device at import would."""

import os

SEEN_AT_IMPORT = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
