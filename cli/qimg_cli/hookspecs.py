"""The CLI's hook: plugins may add subcommands."""
from __future__ import annotations

from qimg.plugins import HookspecMarker

#: ``pluggy.HookspecMarker("qimg")``'s equivalent, without importing pluggy (see qimg.plugins)
hookspec = HookspecMarker("qimg")


@hookspec
def qimg_register_commands(cli) -> None:
    """Add subcommands: call ``cli.add_command(command)`` with a ``click.Command``.

    ``cli`` is the top-level ``click.Group``. Import heavy code inside the command's callback,
    not at module level: this hook runs on every ``qimg`` invocation that looks up a command
    not built in, and for ``qimg --help``.
    """
