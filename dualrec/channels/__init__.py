"""Creator-side retrieval channels (paper 3.2): one interface, a declarative registry and a mixer.

A channel is one module of this package with a ``CHANNEL = ChannelSpec(...)`` declaration; see
:mod:`dualrec.channels.base`. Importing this package imports no channel module and no heavy
library: :func:`registered_channels` discovers the modules on first call.
"""

from dualrec.channels.base import (
    REGISTRY,
    Channel,
    ChannelContext,
    ChannelSpec,
    channel_k,
    channel_names,
    channel_shares,
    channel_spec,
    default_channels,
    default_k,
    get_channel,
    mix,
    register,
    registered_channels,
    registered_names,
    unregister,
)
from dualrec.channels.base import trained_artifacts
from dualrec.config import use_channel_registry
from dualrec.registry import use_artifact_producers

# config validates retrieval.channels / retrieval.k against this registry at load time
use_channel_registry(registered_names)
# a trained channel's artefact names the stage that trains it (no edit of dualrec.registry)
use_artifact_producers(trained_artifacts)

__all__ = [
    "REGISTRY", "Channel", "ChannelContext", "ChannelSpec", "channel_k", "channel_names", "channel_shares",
    "channel_spec", "default_channels", "default_k", "get_channel", "mix", "register", "registered_channels",
    "registered_names", "unregister",
]
