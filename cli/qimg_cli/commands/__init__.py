"""Built-in subcommands: one module per command, each exposing ``command`` (a click.Command),
imported lazily by :class:`qimg_cli.main.LazyGroup`."""
