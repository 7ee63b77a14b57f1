"""Test-wide setup: 4 host CPU devices (for the sharding tests), float64 enabled, and the
hypothesis profiles (``default``: >= 200 examples per op; ``thorough``: >= 5,000; select with
``--hypothesis-profile=thorough`` or ``HYPOTHESIS_PROFILE=thorough``)."""

import os
import tempfile

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Hermetic: no user cache (data sets, measured convolution choices) leaks into the tests.
os.environ["JAXCONV_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxconv-tests-")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_enable_x64", True)

_common = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("default", max_examples=200, **_common)
# CI draws the same examples on every run (hypothesis' own advice for CI): a red CI is then a
# reproducible failure, not a draw. Locally every run draws new examples.
settings.register_profile("ci", max_examples=200, derandomize=True, **_common)
settings.register_profile("thorough", max_examples=5000, **_common)
settings.register_profile("quick", max_examples=25, **_common)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module. The suite compiles thousands of
    small programs in one process; kept all at once, XLA:CPU's compiler crashed (a segfault in
    backend_compile) late in full runs, never in a module run alone."""
    yield
    jax.clear_caches()
