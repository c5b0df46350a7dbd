"""A vLLM record meeting a target someone else already wrapped (wrapt): it reports drift and does
not bypass that wrapper; once the wrapper is gone the next attempt applies."""

import compat_patches


def assert_foreign_wrapper_reported(name, module, attribute):
    import wrapt

    def spy(wrapped, instance, args, kwargs):
        return wrapped(*args, **kwargs)

    handle = wrapt.wrap_function_wrapper(module, attribute, spy)
    try:
        with compat_patches.patched(name) as report:
            entry = report[name]
            assert entry.status == "drifted", entry
            assert "already wrapped" in entry.reason
    finally:
        wrapt.unwrap_object(module, attribute, handle)
    with compat_patches.patched(name) as report:  # the next attempt replaces the drift finding
        assert report[name].status == "applied", report[name]
