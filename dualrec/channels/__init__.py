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

__all__ = ["REGISTRY", "Channel", "channel_names", "channel_shares", "get_channel", "mix", "register", "registered_names"]
