"""Errors a user can cause: the CLI prints them as one line and exits with their code (2 by default)."""


class SftError(Exception):
    """A mistake in config, data or environment that the user can fix."""

    exit_code = 2
    label = "error"  # printed as `sft: <label>: <message>`


class ConfigError(SftError):
    """The config names an unknown key, component or a bad value."""


class OptionError(ConfigError):
    """One option of a component has a bad value (``check_option`` without ``where``): sftcore puts where the
    component is configured in front, ``config: finetune.augment[2].p must be ...``."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option} {problem}")
        self.option, self.problem = option, problem


class PluginError(SftError):
    """A plugin failed to load or registered something invalid."""


class TrainingError(SftError):
    """Training cannot go on (the loss became NaN or infinite); the last good checkpoint is kept."""


class ScoreUnavailable(SftError):
    """A transferability score cannot be computed from what it was handed: LEEP and NCE without the source
    classifier's probabilities (``Score.needs_source``). `sft rank` shows such a score as null."""


class Interrupted(SftError):
    """Ctrl-C (SIGINT) or SIGTERM: progress was saved where possible; exit 128 + the signal number."""

    label = "interrupted"

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.exit_code = 128 + signum


SHOW_LIMIT = 80  # characters of a value an error message quotes


def show(value, limit: int = SHOW_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters with "…": a value quoted in an error message.

    Error lines quote what the user wrote; a hostile or mistaken value (a 35 MB string, a YAML
    alias bomb, an integer of a million digits) must not make that line huge or slow to build.
    """
    import reprlib

    short = reprlib.Repr()
    short.maxstring = short.maxother = short.maxlong = limit
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict, short.maxset = 3, 6, 6, 6, 6
    try:
        text = short.repr(value)
    except ValueError:  # an int too long for str() (Python's 4300-digit limit)
        text = f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else "<unprintable>"
    return text if len(text) <= limit else text[: limit - 1] + "…"
