"""Errors a user can cause: the CLI prints them as one line and exits with their code (2 by default)."""


class SftError(Exception):
    """A mistake in config, data or environment that the user can fix."""

    exit_code = 2
    label = "error"  # printed as `sft: <label>: <message>`


class ConfigError(SftError):
    """The config names an unknown key, component or a bad value."""


class PluginError(SftError):
    """A plugin failed to load or registered something invalid."""


class TrainingError(SftError):
    """Training cannot go on (the loss became NaN or infinite); the last good checkpoint is kept."""


class Interrupted(SftError):
    """Ctrl-C (SIGINT) or SIGTERM: progress was saved where possible; exit 128 + the signal number."""

    label = "interrupted"

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.exit_code = 128 + signum
