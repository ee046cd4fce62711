"""Built-in commands: one module per command, named as the command, imported only to run it.

Each module has ``run(p)`` (``p``: the :class:`qimg_cli.parse.Parsed` command line, parsed from
the command's table in :mod:`qimg_cli.tables`) and may have ``on_option(p, key, value)``, called
as each option is parsed (qemu-img checks some values inside its getopt loop).
"""
