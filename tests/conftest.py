"""Session-wide test settings."""

from __future__ import annotations

import os

# Some tests import litellm directly (as a client). Without these it would try to fetch its
# model cost map from the internet at import; the machines running the suite are offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
