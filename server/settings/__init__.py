"""One settings tree for the server and the cluster (MLServer's settings.py is the anchor).

Sections live one per module beside this file; ``Settings`` nests them. Flags,
``CNN_SERVING_*`` environment variables and an optional settings file are generated
from the fields (see ``docs/settings.md``).
"""

from server.settings.listeners import ListenerSettings, TlsSettings
from server.settings.models import BatchingSettings, ModelSettings
from server.settings.runtime import ImageSettings, MemorySettings, ProtocolSettings
from server.settings.tree import Settings

__all__ = [
    "BatchingSettings",
    "ImageSettings",
    "ListenerSettings",
    "MemorySettings",
    "ModelSettings",
    "ProtocolSettings",
    "Settings",
    "TlsSettings",
]
