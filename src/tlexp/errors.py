"""One error type for bad user input, so the entry point can print it as one clear line."""


class ConfigError(ValueError):
    """A config value is outside what tlexp accepts.

    The message names the config key, the value given and what is accepted.
    """

    def __init__(self, key: str, value, accepted: str, detail: str = ""):
        self.key = key
        message = f"{key}={value!r} is not accepted; accepted: {accepted}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)
