"""simdist.data: the Stage 2 dataset (zarr v3 via tensorstore) and world-model window sampling."""

from simdist.data.dataset import (
    EPISODE_COLUMNS,
    FORMAT,
    SCHEMA_VERSION,
    STD_FLOOR,
    Dataset,
    DatasetSpec,
    format_info,
)
from simdist.data.windows import WindowSampler, heldout_mask

__all__ = [
    "EPISODE_COLUMNS",
    "FORMAT",
    "SCHEMA_VERSION",
    "STD_FLOOR",
    "Dataset",
    "DatasetSpec",
    "WindowSampler",
    "format_info",
    "heldout_mask",
]
