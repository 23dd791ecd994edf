"""SLayer: expand the shallow layers, prune the deepest ones (the "S strategy").

Chen et al., "Llama SLayer 8B: Shallow Layers Hold the Key to Knowledge Injection" (2024),
Sec. 3.3 and Figure 3. The first ``fraction`` (default 1/2) of the ``L`` base layers is split into
``N`` segments; after each segment one new block is inserted, initialised as the element-wise
mean of its two neighbours (the segment's last layer ``i`` and layer ``i+1``, norms included),
with ``o_proj`` and ``down_proj`` zeroed, as in the authors' released script. The last ``d``
layers are deleted and the final kept block is re-initialised as the mean of itself and the
discarded blocks. Only the new blocks and that final block train; embeddings and LM head stay
frozen.

LLaMA2-7B (32 layers), fraction 1/2, N=8, d=2 (the paper's Llama SLayer 8B, 32 -> 38 layers)::

    base:      [0 1] [2 3] ... [14 15] 16 ... 28 29 30 31
    expanded:  [0 1 m] [2 3 m] ... [14 15 m] 16 ... 28 29*
                    ^ mean(1, 2), o_proj = down_proj = 0, trainable
                                              29* = mean(29, 30, 31), trainable; 30, 31 deleted

The pruning step appears only in the paper's Figure 3 (layers 30 and 31 deleted, layer 29 marked
"Updated" and trained), not in released code; the text says the final block is re-initialised
"using the combined average weights of the discarded blocks". ``merge="with_discarded"`` (default)
reads the figure as mean(29, 30, 31), which keeps layer 29's own contribution;
``merge="discarded_only"`` reads the sentence literally, mean(30, 31).

Beyond the paper, ``placement="importance"`` puts the new blocks after the ``num_blocks`` layers
that score highest in a layer-importance profile (``python -m blockexp importance``), e.g. the
layers with the largest angular distance on the user's own domain data; the profile and the chosen
layers are recorded in the manifest.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Literal

from blockexp.expanders.base import Expander, ExpanderConfigError
from blockexp.expanders.registry import register_expander
from blockexp.layers.plan import LayerSpec, Plan

__all__ = ["SLayer", "read_importance_profile"]


def read_importance_profile(path: str | Path, metric: str) -> list[float]:
    """Read one column of an importance CSV (one row per layer, ``layer`` = 0..L-1).

    Args:
        path: a CSV written by ``python -m blockexp importance``.
        metric: the column to read, e.g. ``angular_distance`` or ``removal_loss_increase``.

    Returns:
        The scores, indexed by base layer.

    Raises:
        FileNotFoundError: if the file does not exist.
        ExpanderConfigError: if the column is missing, a value is not a number, or the layers are
            not exactly 0..L-1.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Importance file {path} does not exist. Write one with `python -m blockexp "
            "importance --base MODEL --data TEXT --out DIR` (it writes DIR/importance.csv)."
        )
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "layer" not in columns or metric not in columns:
            numeric = [c for c in columns if c != "layer"]
            raise ExpanderConfigError(
                f"{path}: needs the columns 'layer' and '{metric}'; it has {columns}. Set "
                f"importance_metric to one of {numeric}."
            )
        rows = list(reader)
    scores: dict[int, float] = {}
    for line, row in enumerate(rows, start=2):
        try:
            layer, value = int(row["layer"]), float(row[metric])
        except (TypeError, ValueError):
            raise ExpanderConfigError(
                f"{path}, line {line}: layer={row.get('layer')!r}, {metric}={row.get(metric)!r} "
                "is not a number."
            ) from None
        scores[layer] = value
    if sorted(scores) != list(range(len(rows))):
        raise ExpanderConfigError(f"{path}: the 'layer' column must list 0..{len(rows) - 1} once.")
    return [scores[i] for i in range(len(rows))]


@register_expander
class SLayer(Expander):
    """Shallow-layer expansion with deep-layer pruning (Llama SLayer's S strategy).

    Args:
        fraction: share of the base layers (from the bottom) that is expanded; the first
            ``floor(fraction * L)`` layers are split into ``num_segments`` segments.
        num_segments: ``N``, one new block after each segment; must divide the expanded range.
            Default: segments of two layers (``floor(fraction * L) / 2``), as in the paper.
        num_deleted: ``d``, how many of the deepest layers are deleted (0 keeps all).
        init: ``mean`` (element-wise mean of the two neighbours, the paper's choice) or ``copy``
            (identity copy of the layer below, LLaMA Pro style).
        zero_out: zero ``o_proj`` and ``down_proj`` (and biases) of the new blocks, which makes
            them exact identities at initialisation.
        merge: how the final kept block is re-initialised after pruning: ``with_discarded``
            (mean of itself and the deleted blocks, the default) or ``discarded_only`` (mean of
            the deleted blocks).
        placement: ``uniform`` (after each segment) or ``importance`` (after the ``num_blocks``
            layers with the highest ``importance_metric`` in an importance profile).
        importance_file: CSV from ``python -m blockexp importance`` (``placement="importance"``).
        importance_metric: CSV column that ranks the layers (higher = more important).
        importance_scores: the profile itself, one score per base layer; takes precedence over
            ``importance_file`` (it is what the manifest records, so a rebuild needs no file).
        num_blocks: number of new blocks for ``placement="importance"`` (default: as many as
            the uniform placement would add).
        **kwargs: the ``train_*`` options of :class:`~blockexp.expanders.Expander`.
    """

    streamable = True
    #: Not for every argument: the default deletes layers. See :meth:`is_identity`.
    preserves_function = False

    def __init__(
        self,
        fraction: float = 0.5,
        num_segments: int | None = None,
        num_deleted: int = 2,
        init: Literal["mean", "copy"] = "mean",
        zero_out: bool = True,
        merge: Literal["with_discarded", "discarded_only"] = "with_discarded",
        placement: Literal["uniform", "importance"] = "uniform",
        importance_file: str | None = None,
        importance_metric: str = "angular_distance",
        importance_scores: list[float] | None = None,
        num_blocks: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 < fraction <= 1.0:
            raise ExpanderConfigError(f"SLayer: fraction must be in (0, 1], got {fraction}.")
        if num_segments is not None and num_segments < 1:
            raise ExpanderConfigError(f"SLayer: num_segments must be >= 1, got {num_segments}.")
        if num_deleted < 0:
            raise ExpanderConfigError(f"SLayer: num_deleted must be >= 0, got {num_deleted}.")
        if init not in ("mean", "copy"):
            raise ExpanderConfigError(f"SLayer: init must be 'mean' or 'copy', got {init!r}.")
        if merge not in ("with_discarded", "discarded_only"):
            raise ExpanderConfigError(
                f"SLayer: merge must be 'with_discarded' or 'discarded_only', got {merge!r}."
            )
        if placement not in ("uniform", "importance"):
            raise ExpanderConfigError(
                f"SLayer: placement must be 'uniform' or 'importance', got {placement!r}."
            )
        if num_blocks is not None and num_blocks < 1:
            raise ExpanderConfigError(f"SLayer: num_blocks must be >= 1, got {num_blocks}.")
        if placement == "importance" and importance_scores is None:
            if importance_file is None:
                raise ExpanderConfigError(
                    "SLayer: placement='importance' needs importance_file (a CSV from `python -m "
                    "blockexp importance`) or importance_scores."
                )
            importance_scores = read_importance_profile(importance_file, importance_metric)
        if importance_scores is not None:
            importance_scores = [float(x) for x in importance_scores]
            if not all(math.isfinite(x) for x in importance_scores):
                raise ExpanderConfigError(
                    f"SLayer: the importance profile ({importance_metric}) has non-finite values; "
                    "choose a metric defined for every layer (e.g. angular_distance)."
                )
        self.fraction = fraction
        self.num_segments = num_segments
        self.num_deleted = num_deleted
        self.init = init
        self.zero_out = zero_out
        self.merge = merge
        self.placement = placement
        self.importance_file = importance_file
        self.importance_metric = importance_metric
        self.importance_scores = importance_scores
        self.num_blocks = num_blocks

    def is_identity(self) -> bool:
        """Without pruning and with zeroed writers the expansion is an exact identity."""
        return self.num_deleted == 0 and self.zero_out

    # -- the plan -------------------------------------------------------------------------------
    def insert_after(self, num_layers: int) -> list[int]:
        """Base layers after which a new block is inserted, in increasing order."""
        kept = num_layers - self.num_deleted
        if kept < 2:
            raise ExpanderConfigError(
                f"SLayer: deleting num_deleted={self.num_deleted} of {num_layers} layers leaves "
                f"{kept}; keep at least 2 (lower num_deleted)."
            )
        span = int(math.floor(self.fraction * num_layers + 1e-9))
        if self.placement == "importance":
            return self._insert_after_by_importance(num_layers, span, kept)
        segments = self.num_segments or span // 2
        if span < 1 or segments < 1 or span % segments != 0:
            divisors = [d for d in range(1, span + 1) if span % d == 0]
            raise ExpanderConfigError(
                f"SLayer: the expanded range (first {span} of {num_layers} layers, "
                f"fraction={self.fraction}) cannot be split into num_segments={segments} equal "
                f"segments. Choose num_segments from {divisors} or change fraction."
            )
        size = span // segments
        after = [(s + 1) * size - 1 for s in range(segments)]
        if after[-1] >= self._insertion_limit(kept):
            raise ExpanderConfigError(
                f"SLayer: the last new block would follow layer {after[-1]}, which needs a kept, "
                f"unmerged upper neighbour for init={self.init!r} ({num_layers} layers, "
                f"num_deleted={self.num_deleted}). Lower fraction or num_deleted."
            )
        return after

    def _insertion_limit(self, kept: int) -> int:
        """New blocks may follow base layers ``0 .. limit-1``: a mean needs the upper neighbour
        ``i+1`` to be kept, and nothing goes after the re-initialised final block."""
        return kept - 1 if (self.init == "mean" or self.num_deleted > 0) else kept

    def _insert_after_by_importance(self, num_layers: int, span: int, kept: int) -> list[int]:
        scores = self.importance_scores or []
        if len(scores) != num_layers:
            raise ExpanderConfigError(
                f"SLayer: the importance profile has {len(scores)} layers but the model has "
                f"{num_layers}; compute it on this base model (python -m blockexp importance)."
            )
        # Candidates: inside the expanded range, and (for means) the upper neighbour is kept.
        candidates = list(range(min(span, self._insertion_limit(kept))))
        k = self.num_blocks or self.num_segments or max(1, span // 2)
        if k > len(candidates):
            raise ExpanderConfigError(
                f"SLayer: num_blocks={k} exceeds the {len(candidates)} candidate layers "
                f"(0..{len(candidates) - 1}: within fraction={self.fraction} and below the "
                "kept top). Lower num_blocks or raise fraction."
            )
        ranked = sorted(candidates, key=lambda i: (-scores[i], i))
        return sorted(ranked[:k])

    def plan(self, num_layers: int) -> Plan:
        after = set(self.insert_after(num_layers))
        kept = num_layers - self.num_deleted
        final = kept - 1
        specs: list[LayerSpec] = []
        for i in range(kept):
            if i == final and self.num_deleted > 0:
                discarded = tuple(range(kept, num_layers))
                source = discarded if self.merge == "discarded_only" else (final, *discarded)
                init = "copy" if len(source) == 1 else "mean"
                specs.append(LayerSpec(0, source, init, zero_out=False, trainable=True))
            else:
                specs.append(LayerSpec(0, (i,), "base"))
            if i in after:
                source = (i, i + 1) if self.init == "mean" else (i,)
                specs.append(
                    LayerSpec(0, source, self.init, zero_out=self.zero_out, trainable=True)
                )
        return Plan.from_groups(num_layers, [specs], strategy=type(self).__name__)

    def describe(self, num_layers: int) -> dict[str, Any]:
        """The placement, the deleted and merged layers and the importance profile."""
        extra: dict[str, Any] = {
            "placement": self.placement,
            "insert_after": self.insert_after(num_layers),
            "deleted_layers": list(range(num_layers - self.num_deleted, num_layers)),
        }
        if self.num_deleted:
            extra["merged_final_layer"] = {
                "base_layer": num_layers - self.num_deleted - 1,
                "sources": list(self.plan(num_layers).layers[-1].source),
            }
        if self.importance_scores is not None:
            extra["importance"] = {
                "file": self.importance_file,
                "metric": self.importance_metric,
                "scores": list(self.importance_scores),
            }
        return extra
