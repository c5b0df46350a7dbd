"""Exceptions raised by compat_patches."""


class CompatPatchesError(Exception):
    """Base class of every error compat_patches raises."""


class UnknownPatchError(CompatPatchesError, KeyError):
    """A patch name that no record carries (API argument or environment variable)."""

    def __init__(self, unknown, known, source="argument"):
        self.unknown = tuple(unknown)
        self.known = tuple(known)
        message = (
            f"unknown patch name(s) {', '.join(map(repr, self.unknown))} in {source}; "
            f"known names: {', '.join(self.known)}"
        )
        super().__init__(message)

    def __str__(self):  # KeyError would otherwise repr() the message
        return self.args[0]


class PatchDriftError(CompatPatchesError):
    """Strict mode: the version says the bug exists but the target no longer looks as expected."""


class PatchFailedError(CompatPatchesError):
    """Strict mode: installing or removing a wrapper raised."""


class PatchUnverifiedError(CompatPatchesError):
    """COMPAT_PATCHES_REQUIRE_VERIFIED: an installed release is newer than the one a record was
    verified through, so the record is not applied."""


class InvalidSettingError(CompatPatchesError, ValueError):
    """A COMPAT_PATCHES_* environment variable or an argument with a value we do not accept."""
