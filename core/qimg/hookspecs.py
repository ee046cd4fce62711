"""Hook specifications: the contract between qimg and its plugins.

A plugin is a module named by an entry point in the group ``qimg``. It implements any of
these hooks, decorated with :data:`qimg.plugins.hookimpl`. Every built-in format is such a
plugin. Keep plugin modules tiny: register names and lazy ``"module:Class"`` paths here and
import heavy code only when the driver is used, so ``qimg --help`` stays fast.

The CLI adds one more hook, ``qimg_register_commands(cli)``, specified in ``qimg_cli.hookspecs``
so that the core does not depend on click.
"""
from __future__ import annotations

from .plugins import HookspecMarker

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from .registry import Registry

#: ``pluggy.HookspecMarker("qimg")``'s equivalent (see :mod:`qimg.plugins`)
hookspec = HookspecMarker("qimg")


@hookspec
def qimg_register_formats(registry: "Registry") -> None:
    """Register image format drivers.

    Call ``registry.add_format(name, driver, probe=..., description=...)`` once per format:

    - ``name``: the format name users pass to ``-f``/``-O`` (``"qcow2"``).
    - ``driver``: ``"package.module:Class"``, a subclass of :class:`qimg.driver.Format`,
      imported only when an image of this format is opened or created.
    - ``probe``: a cheap callable ``probe(head: bytes, filename: str) -> int`` scoring the
      first 512 bytes of a file (0 = not mine, 100 = certain). Raw scores 1. Highest wins.

    Two plugins registering the same name is an error. All results are collected.
    """


@hookspec
def qimg_register_protocols(registry: "Registry") -> None:
    """Register protocols: where an image's bytes live (``file``; later ``nbd``, ``http``).

    Call ``registry.add_protocol(name, driver, prefixes=(...))`` where ``driver`` is
    ``"module:Class"`` naming a :class:`qimg.protocol.Protocol` subclass and ``prefixes`` are
    the filename prefixes (``"nbd"`` for ``nbd://...``/``nbd:...``) that select it.
    """
