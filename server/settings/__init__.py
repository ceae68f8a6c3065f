"""One settings tree for the server and the cluster (MLServer's settings.py is the anchor).

Sections live one per module beside this file; ``Settings`` nests them. Flags,
``CNN_SERVING_*`` environment variables and an optional settings file are generated
from the fields (see ``docs/settings.md``).
"""
