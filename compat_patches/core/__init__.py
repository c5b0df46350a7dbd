"""The patch framework. Knows no library: patches are records handed to a PatchManager."""

from .errors import (
    CompatPatchesError, InvalidSettingError, PatchDriftError, PatchFailedError, PatchUnverifiedError,
    UnknownPatchError,
)
from .manager import (
    ENV_DISABLE, ENV_ONLY, ENV_REQUIRE_VERIFIED, ENV_STRICT, TRUE_VALUES, PatchManager, env_strict, live_managers,
    parse_flag,
)
from .record import Patch, Target
from .report import STATUSES, PatchReport, Report

__all__ = [
    "CompatPatchesError", "InvalidSettingError", "PatchDriftError", "PatchFailedError",
    "PatchUnverifiedError", "UnknownPatchError", "PatchManager", "live_managers", "ENV_DISABLE",
    "ENV_ONLY", "ENV_REQUIRE_VERIFIED", "ENV_STRICT",
    "TRUE_VALUES", "env_strict", "parse_flag", "Patch", "Target", "STATUSES", "PatchReport",
    "Report",
]
