"""The validation score of the learned re-rankers during training."""
from __future__ import annotations

import numpy as np
import torch

from ..evaluate import class_map
from ..ranking import Ranking, resort_top


def resorted_class_map(neighbours: torch.Tensor, top_scores: torch.Tensor, labels) -> float:
    """Class mAP with every image a query against the others: ``neighbours`` (n x n-1) is
    each image's ranking of the others, whose first m = ``top_scores.shape[1]`` are
    re-sorted by ``top_scores`` (ties by the lower index) before scoring."""
    n = neighbours.shape[0]
    top_scores = top_scores.to(neighbours.device)
    new = resort_top(Ranking(neighbours, torch.zeros(neighbours.shape, device=neighbours.device)), top_scores)
    own = torch.arange(n, device=neighbours.device).unsqueeze(1)
    full = torch.cat([new.indices, own], dim=1).cpu().numpy()  # the query itself last, dropped by exclude_self
    labels = np.asarray(torch.as_tensor(labels).cpu())
    return class_map(full, labels, labels, exclude_self=True)
