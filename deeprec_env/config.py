"""Typed views of the Hydra config tree shared by every entry point (and by `gymnasium.make`)."""

from __future__ import annotations

import functools
from typing import Any


def typed(schema: type, node: Any) -> Any:
    """Validate a config node against its dataclass and return the dataclass instance. Interpolations are
    resolved against the node's root first (`trm.backbone: ${sasrec}`)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))


@functools.cache
def _encoder(path: str | None, batch_size: int, max_seq_length: int):
    from deeprec_env.text import EncoderConfig, TextEncoder

    return TextEncoder(EncoderConfig(path=path, batch_size=batch_size, max_seq_length=max_seq_length))


def text_encoder(text_node: Any):
    """The sentence encoder of a `text` config node (one instance per process and setting)."""
    return _encoder(text_node.path, text_node.batch_size, text_node.max_seq_length)
