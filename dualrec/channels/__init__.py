"""Creator-side retrieval channels (paper 3.2): one interface, a registry and a mixer."""

from dualrec.channels.base import (
    REGISTRY,
    Channel,
    channel_names,
    channel_shares,
    get_channel,
    mix,
    register,
    registered_names,
)
from dualrec.config import use_channel_registry

# config validates retrieval.channels / retrieval.k against this registry at load time
use_channel_registry(registered_names)

__all__ = ["REGISTRY", "Channel", "channel_names", "channel_shares", "get_channel", "mix", "register", "registered_names"]
