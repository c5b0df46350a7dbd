"""The patch framework. Knows no library: patches are records handed to a PatchManager."""

from .errors import CompatPatchesError, PatchDriftError, PatchFailedError, UnknownPatchError
from .manager import PatchManager, live_managers
from .record import Patch, Target
from .report import STATUSES, PatchReport, Report

__all__ = [
    "CompatPatchesError", "PatchDriftError", "PatchFailedError", "UnknownPatchError",
    "PatchManager", "live_managers", "Patch", "Target", "STATUSES", "PatchReport", "Report",
]
