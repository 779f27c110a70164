"""Errors a person can act on. Tasks turn these into `invoke.Exit`, never a traceback."""


class GoldsmithError(Exception):
    """Base of every error goldsmith reports to its user."""


class ToolError(GoldsmithError):
    """An external tool exited non-zero."""

    def __init__(self, tool: str, code: int, hint: str = "") -> None:
        self.tool = tool
        self.code = code
        msg = f"{tool} failed with exit code {code}"
        super().__init__(f"{msg}: {hint}" if hint else msg)


class MissingTool(GoldsmithError):
    """A system tool goldsmith needs is not installed."""
