"""Former private name of :mod:`textrefiner.testing`; kept so older imports keep working."""

from .testing import *  # noqa: F401,F403
from .testing import _CHARS, _MARKER_TOKENS, _vocab  # noqa: F401
