"""Errors a user can cause: the CLI prints them as one line and exits with code 2."""


class SftError(Exception):
    """A mistake in config, data or environment that the user can fix."""

    exit_code = 2


class ConfigError(SftError):
    """The config names an unknown key, component or a bad value."""


class PluginError(SftError):
    """A plugin failed to load or registered something invalid."""
