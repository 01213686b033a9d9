"""The refinement network (``RefinementNetwork``): an output canvas refined recursively with deep
supervision (docs/refiner.md). ``network`` is the LightningModule, ``sources`` where its drafts come
from, ``voting`` its predict with augmentation voting."""

from gridlm.modules.refiner.network import RefinementNetwork
from gridlm.modules.refiner.sources import DRAFT_SOURCES, DraftSource, load_base_model, same_grid

__all__ = ["DRAFT_SOURCES", "DraftSource", "RefinementNetwork", "load_base_model", "same_grid"]
