"""Which parameters train: plan layers and ``train_*`` options turned into parameter names."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from blockexp.layers.arch import ArchSpec

__all__ = ["TrainOptions", "trainable_parameter_names"]


@dataclass(frozen=True)
class TrainOptions:
    """Modules that train besides the plan's trainable layers.

    Attributes:
        embeddings: the input token embedding.
        lm_head: the output projection (the embedding tensor itself when the model ties them).
        norms: every normalisation layer (inside all blocks, and the final norm).
        all_layers: every decoder layer (full fine-tuning).
    """

    embeddings: bool = False
    lm_head: bool = False
    norms: bool = False
    all_layers: bool = False


def trainable_parameter_names(
    arch: ArchSpec,
    names: Iterable[str],
    trainable_layers: Iterable[int],
    options: TrainOptions,
    tied: bool,
) -> frozenset[str]:
    """The members of ``names`` that train.

    Args:
        arch: the architecture (module paths of layers, norms, embedding, LM head).
        names: parameter names as ``model.named_parameters()`` gives them, or the tensor names
            of a checkpoint (the same names: ``model.layers.3.mlp.down_proj.weight``).
        trainable_layers: indices of the decoder layers that train (from the plan).
        options: what else trains.
        tied: whether the LM head is the embedding tensor (then ``lm_head`` selects the
            embedding's name, the only one a tied model or checkpoint has).

    Returns:
        The trainable names.
    """
    layers = set(trainable_layers)
    modules = set()
    if options.embeddings or (options.lm_head and tied):
        modules.add(".".join(arch.embed_path))
    if options.lm_head and not tied:
        modules.add(".".join(arch.lm_head_path))
    if options.norms:
        modules.add(".".join(arch.final_norm_path))
    selected = set()
    for name in names:
        parsed = arch.split_layer_key(name)
        if parsed is None:
            if name.rpartition(".")[0] in modules:
                selected.add(name)
            continue
        index, rest = parsed
        if options.all_layers or index in layers:
            selected.add(name)
        elif options.norms and rest.rpartition(".")[0] in arch.layer_norms:
            selected.add(name)
    return frozenset(selected)
