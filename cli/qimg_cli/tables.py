"""The option tables' model and the list of built-in commands.

Every built-in command declares its options once, as data: ``TABLE``, a :class:`Command`, at the
top of its module ``qimg_cli.commands.<name>``, beside the code that runs it (a run imports that
module anyway, and no other command's table). This module holds the model, the standard
options (:func:`global_options`), and what the global help lists of every command (its 10.0
summary, its 7.2 syntax line). The parser (:mod:`qimg_cli.parse`), the help texts
(:mod:`qimg_cli.help`), the man page and the shell completions all read the tables.

The model: an :class:`Opt` is one option: the key its command reads it by, its names, whether
it takes an argument, whether it may be repeated, and its entry in qemu-img 10.0's help. A
command lists its options in the order of qemu-img 10.0's long-option table (getopt's ambiguity
messages list candidates in that order; 7.2's names come in the same order). A name a profile
(:mod:`qimg.compat`) does not have carries ``@`` and the first profile that has it:
``"-b@10.0 --backing-chain"`` is ``--backing-chain`` in every profile and ``-b`` from 10.0 on.
``doc`` is the option's entry in qemu-img 10.0's ``COMMAND --help`` exactly as printed (typos
and uneven indentation included: scripts and tests compare it byte for byte); a command's
``layout`` orders that help's "Arguments:" section, with literal lines for the non-option
arguments; its ``quirks`` name the parsing rules a profile has for it.
"""
from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Iterable

#: the profile every name has unless it says otherwise (qimg.compat.PROFILES' oldest)
OLDEST = "7.2"


_VERSIONS: dict[str, tuple[int, ...]] = {}
_NAMES: dict[str, tuple[str, tuple[int, ...], bool, bool]] = {}


def _version(profile: str) -> tuple[int, ...]:
    v = _VERSIONS.get(profile)
    if v is None:
        v = _VERSIONS[profile] = tuple(int(p) for p in profile.split("."))
    return v


def _name(raw: str) -> tuple[str, tuple[int, ...], bool, bool]:
    """``"--apply@10.0~"`` -> (``--apply``, (10, 0), takes no argument, exact only)."""
    info = _NAMES.get(raw)
    if info is None:
        n, _, since = raw.rstrip("~!").partition("@")
        info = _NAMES[raw] = (n, _version(since or OLDEST), raw.endswith("~"), raw.endswith("!"))
    return info


class Opt:
    """One option of a command.

    ``names``: space-separated ``-x`` and ``--long`` names, each with an optional ``@profile``
    (the first profile that has it), the short one first if any. A long name ending in ``~``
    takes no argument although the option does (qemu-img 10.0's snapshot declares
    ``--apply``, ``--create``, ``--delete`` so: ``--create NAME`` is ``--create`` and a file name).
    A long name ending in ``!`` is qimg's own and matches only when spelled out: it takes no
    part in abbreviations, so qemu-img's own prefixes and ambiguity lists stay as they are. ``arg``: takes an argument.
    ``repeat``: may be given more than once and every value counts (``-o``, ``--object``);
    otherwise the last one wins. ``doc``: the option's entry in qemu-img 10.0's help, exactly
    as printed (lines indented as there), or "" when it has none. ``metavar``: the argument's
    name for generated documentation (man page, completion); defaults to the one in ``doc``.
    ``complete``: what a shell should offer for its argument: ``file``, ``format`` (the
    registry's formats), or a space-separated list of words. ``about``: what the man page says
    of an option qemu-img 10.0's help does not describe (its ``doc`` has no text).
    """

    __slots__ = ("key", "names", "arg", "repeat", "doc", "metavar", "complete", "about")

    def __init__(self, key: str, names: str, arg: bool = False, doc: str = "", *, repeat: bool = False,
                 metavar: str = "", complete: str = "", about: str = "") -> None:
        self.key, self.names, self.arg, self.repeat = key, tuple(names.split()), arg, repeat
        self.doc, self.metavar, self.complete, self.about = doc, metavar, complete, about


class Command:
    """A built-in command: its table and texts.

    ``summary``: its one line in qemu-img 10.0's ``--help`` and ``syntax72``: its line under
    "Command syntax:" in qemu-img 7.2's help (both from :data:`SUMMARIES` and :data:`SYNTAX_72`:
    the global help lists every command without importing any). ``usage``: the synopsis after
    ``qemu-img NAME`` in its 10.0 help. ``options``: :class:`Opt` in qemu-img 10.0's long-option table order.
    ``layout``: its 10.0 help's "Arguments:" entries: option keys, or literal text. ``module``:
    where its ``run`` lives. ``quirks``: ``{profile: (quirk, ...)}``, the newest profile not
    newer than the selected one applies: ``glibc-then-help`` (getopt prints its own messages,
    then the global help, exit 0: 7.2's measure), ``size-last`` (the last argument is the size
    and is taken off before parsing: 7.2's resize), ``size-inline`` (non-options in order, an
    argument ``-<digit>...`` after the file name is the size: 10.0's resize).
    """

    __slots__ = ("name", "summary", "usage", "syntax72", "options", "layout", "module", "quirks", "positionals")

    def __init__(self, name: str, summary: str = "", *, usage: str, options: Iterable[Opt], layout: Iterable[str],
                 syntax72: str = "", quirks: dict[str, tuple[str, ...]] | None = None,
                 positionals: str = "file") -> None:
        self.name, self.usage = name, usage
        self.summary = summary or SUMMARIES.get(name, "")
        self.syntax72 = syntax72 or SYNTAX_72.get(name, "")
        self.options = tuple(options)
        self.layout = tuple(layout)
        self.module = f"qimg_cli.commands.{name}"
        self.quirks = quirks or {}
        #: what shells should complete for the non-option arguments (``file``, ``dd``...)
        self.positionals = positionals

    def quirk(self, profile: str) -> tuple[str, ...]:
        v = _version(profile)
        best: tuple[tuple[int, ...], tuple[str, ...]] | None = None
        for p, q in self.quirks.items():
            pv = _version(p)
            if pv <= v and (best is None or pv > best[0]):
                best = (pv, q)
        return best[1] if best else ()

    def getopt_tables(self, profile: str) -> tuple[dict[str, tuple[str, bool]], list[tuple]]:
        """(letter -> (key, takes an argument), [(long name, key, takes an argument)]) as
        ``profile``'s qemu-img passes them to getopt_long."""
        v = _version(profile)
        shorts: dict[str, tuple[str, bool]] = {}
        longs: list[tuple] = []
        for o in self.options:
            key, arg = o.key, o.arg
            for raw in o.names:
                name, since, noarg, exact = _NAMES.get(raw) or _name(raw)
                if since > v:
                    continue
                if name[1] != "-":
                    shorts[name[1]] = (key, arg)
                elif exact:
                    longs.append((name[2:], key, arg and not noarg, True))
                else:
                    longs.append((name[2:], key, arg and not noarg))
        return shorts, longs

    def option(self, key: str) -> Opt:
        for o in self.options:
            if o.key == key:
                return o
        raise KeyError(key)


# -- the tables ---------------------------------------------------------------------------------


# entries many commands share (the same words in qemu-img 10.0's help)
OBJECT_DOC = "  --object OBJDEF\n     QEMU user-creatable object (eg encryption key)"
IMAGE_OPTS_DOC = ("  --image-opts\n     indicates that FILENAME is a complete image specification\n"
               "     instead of a file name (incompatible with --format)")
FILENAME_DOC = "  FILENAME\n     image file name (or specification with --image-opts)"


def object_option(doc: str = OBJECT_DOC) -> Opt:
    return Opt("objects", "--object", True, doc, repeat=True, metavar="OBJDEF",
               about="" if doc else "QEMU user-creatable object (eg encryption key)")


def help_option() -> Opt:
    return Opt("help", "-h --help", doc="  -h, --help\n     print this help and exit")


def global_options() -> Command:
    """``qemu-img [standard options] COMMAND``: the options before the command name."""
    return Command(
        "", "QEMU disk image utility", usage="[standard options] COMMAND [--help | command options]", syntax72="",
        options=(
            Opt("help", "-h --help", doc="  -h, --help\n     display this help and exit"),
            Opt("version", "-V --version", doc="  -V, --version\n     display version info and exit"),
            Opt("trace", "-T --trace", True, "  -T,--trace TRACE\n     specify tracing options:\n"
                "        [[enable=]<pattern>][,events=<file>][,file=<file>]", repeat=True, metavar="TRACE"),
            # qimg's own (docs/security.md): not in qemu-img's table, not in its help
            Opt("untrusted", "--untrusted!", about="qimg's own: open nothing an image names (backing files, "
                "external data files) and limit memory and CPU time, for images from untrusted sources "
                "(QIMG_UNTRUSTED=1 does the same)"),
        ),
        layout=("help", "version", "trace"), quirks={"7.2": ("require-order",)}, positionals="command")




#: built-in commands, alphabetical (qemu-img 10.0's order in ``--help``)
NAMES = ("amend", "bench", "bitmap", "check", "commit", "compare", "convert", "create", "dd", "info", "map",
         "measure", "rebase", "resize", "snapshot")
#: qemu-img 7.2's order under "Command syntax:" (qemu-img-cmds.hx)
NAMES_72 = ("amend", "bench", "bitmap", "check", "commit", "compare", "convert", "create", "dd", "info", "map",
            "measure", "snapshot", "rebase", "resize")

#: each command's line in qemu-img 10.0's ``--help`` (its summary)
SUMMARIES = {
    "amend": "Update format-specific options of the image",
    "bench": "Run simple image benchmark",
    "bitmap": "Perform modifications of the persistent bitmap in the image",
    "check": "Check basic image integrity",
    "commit": "Commit image to its backing file",
    "compare": "Check if two images have the same contents",
    "convert": "Copy one image to another with optional format conversion",
    "create": "Create and format new image file",
    "dd": "Copy input to output with optional format conversion",
    "info": "Display information about image",
    "map": "Dump image metadata",
    "measure": "Calculate file size requred for a new image",
    "rebase": "Change backing file of the image",
    "resize": "Resize the image to the new size",
    "snapshot": "List or manipulate snapshots within image",
}

#: each command's line under "Command syntax:" in qemu-img 7.2's ``--help``
SYNTAX_72 = {
    "amend": "amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename",
    "bench": ("bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] "
                  "[-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename"),
    "bitmap": ("bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... "
                  "[-b source_file [-F source_fmt]] [-g granularity] [--object objectdef] [--image-opts | -f fmt] "
                  "filename bitmap"),
    "check": ("check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] "
                  "[-T src_cache] [-U] filename"),
    "commit": ("commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] "
                  "[-p] filename"),
    "compare": ("compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] "
                  "filename1 filename2"),
    "convert": ("convert [--object objectdef] [--image-opts] [--target-image-opts] [--target-is-zero] [--bitmaps] [-U] "
                  "[-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] "
                  "[-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param] [-S sparse_size] "
                  "[-r rate_limit] [-m num_coroutines] [-W] [--salvage] filename [filename2 [...]] output_filename"),
    "create": "create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]",
    "dd": ("dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] "
                  "if=input of=output"),
    "info": "info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename",
    "map": ("map [--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len] "
                  "[--output=ofmt] [-U] filename"),
    "measure": ("measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--object objectdef] [--image-opts] "
                  "[-f fmt] [-l snapshot_param] filename]"),
    "rebase": ("rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] "
                  "-b backing_file [-F backing_fmt] filename"),
    "resize": ("resize [--object objectdef] [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink] "
                  "filename [+ | -]size"),
    "snapshot": ("snapshot [--object objectdef] [--image-opts] [-U] [-q] "
                  "[-l | -a snapshot | -c snapshot | -d snapshot] filename"),
}


def command(name: str) -> Command | None:
    """The table of built-in command ``name`` (None: not built in): ``TABLE`` of its module
    ``qimg_cli.commands.<name>``, beside the code that runs it."""
    if name not in SUMMARIES:
        return None
    module = f"qimg_cli.commands.{name}"
    # importlib.import_module without importing importlib at start-up (as qimg.registry's; the
    # tables need nothing of the core: the wheel's build hook reads them without it)
    __import__(module)
    return sys.modules[module].TABLE
