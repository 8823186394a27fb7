"""A real sidecar on the emulator for the scrape the alerts are checked against: the sidecar tests'
fixtures."""

from tests.sidecar.conftest import emulator, key_env, make_emulator, make_sidecar  # noqa: F401
