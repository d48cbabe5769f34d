"""The measures: image quality against the uncached image (`quality.py`), feature similarity across steps
(`similarity.py`), distribution metrics of sample sets (`distribution.py`) and which module computed at which step
(`compute_map.py`)."""
