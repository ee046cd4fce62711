"""What is generated from the option tables (:mod:`qimg_cli.tables`): the man page ``qimg(1)``
and the bash and zsh completions (``python -m qimg_cli.gen man|bash|zsh``; cli/hatch_build.py
puts them in the wheel), and the options section of each command's page (``python -m qimg_cli.gen docs``;
tests/test_gen.py checks the pages are current); and the questions about an option that such
documentation asks: which names it has in a profile, its description, its argument's name.
(Kept out of tables.py: a command's run needs none of it, and start-up pays for every line.)
"""
from __future__ import annotations

from .tables import NAMES, Command, Opt, _name, _version, command, global_options

# -- questions about an option -----------------------------------------------------------------

def short(o: Opt, profile: str) -> str | None:
    """The option letter in ``profile`` (None: it has none there)."""
    v = _version(profile)
    for raw in o.names:
        name, since, _, _ = _name(raw)
        if name[1] != "-" and since <= v:
            return name[1]
    return None


def longs(o: Opt, profile: str) -> list[str]:
    """The long names ``profile`` knows (qimg's exact-only names included), in table order."""
    v = _version(profile)
    return [name[2:] for name, since, _, _ in map(_name, o.names) if name[1] == "-" and since <= v]


def all_names(o: Opt) -> list[str]:
    """Every spelling in any profile (``-f``, ``--format``)."""
    return [_name(raw)[0] for raw in o.names]


def names_in(o: Opt, profile: str) -> list[str]:
    """The spellings ``profile`` has, short first."""
    c = short(o, profile)
    return ([f"-{c}"] if c else []) + [f"--{n}" for n in longs(o, profile)]


def description(o: Opt) -> str:
    """The option's help text without its names, as one paragraph."""
    lines = o.doc.split("\n")
    first = lines[0].strip()
    rest = [ln.strip() for ln in lines[1:]]
    if not rest and o.metavar and f" {o.metavar} " in first:
        # an entry whose names and text share one line ("-t, --cache MODE text")
        rest = [first.split(f" {o.metavar} ", 1)[1]]
    return " ".join(r for r in rest if r)


def argname(o: Opt) -> str:
    """The name of the option's argument for generated documentation ("" without one)."""
    if not o.arg:
        return ""
    if o.metavar:
        return o.metavar
    words = o.doc.split("\n")[0].split()
    last = words[-1] if words else ""
    return last if last and not last.startswith("-") and last != "--help" else "ARG"


def commands() -> list[Command]:
    return [command(n) for n in NAMES]  # type: ignore[misc]



# -- the man page --------------------------------------------------------------------------------

PROFILES = ("7.2", "10.0")
DEFAULT = "10.0"


def _roff(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped, no leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _names_roff(o: Opt) -> str:
    names = names_in(o, DEFAULT)
    arg = argname(o)
    out = ", ".join(f"\\fB{_roff(n)}\\fR" for n in names)
    if arg:
        out += f" \\fI{_roff(arg)}\\fR"
    old = names_in(o, "7.2")
    if old != names:
        out += " (QIMG_COMPAT=7.2: " + (", ".join(_roff(n) for n in old) if old else "not available") + ")"
    return out


def _text(o: Opt) -> str:
    return description(o) or o.about


def man_page(version: str) -> str:
    """``qimg(1)`` in man(7) roff, from the tables (options as in the default profile, with the
    7.2 profile's differences noted)."""
    from .tables import SUMMARIES

    g = global_options()
    out = [
        f'.TH QIMG 1 "" "qimg {version}" "User Commands"',
        ".SH NAME",
        "qimg \\- create, convert, inspect and modify virtual disk images (a qemu\\-img in Python)",
        ".SH SYNOPSIS",
        ".B qimg",
        "[\\fIstandard options\\fR] \\fICOMMAND\\fR [\\fIcommand options\\fR]",
        ".br",
        ".B qimg",
        "\\fICOMMAND\\fR \\fB\\-\\-help\\fR",
        ".SH DESCRIPTION",
        "qimg is a drop\\-in replacement for QEMU's",
        ".BR qemu\\-img (1):",
        "the same commands, options, output, messages and exit codes. Which version of qemu\\-img it",
        "reproduces is a profile, chosen by the environment variable",
        ".B QIMG_COMPAT",
        "(see ENVIRONMENT). Installed under the name qemu\\-img, it names itself so in every message.",
        "Every image format is a plugin; \\fBqimg \\-\\-help\\fR lists the installed ones.",
        ".SH STANDARD OPTIONS",
    ]
    for o in g.options:
        out += [".TP", _names_roff(o), _roff(_text(o))]
    out.append(".SH COMMANDS")
    for name, summary in SUMMARIES.items():
        cmd = command(name)
        assert cmd is not None
        usage = " ".join(cmd.usage.split())
        out += [f".SS {name}", _roff(summary) + ".", ".PP", f"\\fBqimg {name}\\fR {_roff(usage)}"]
        for o in cmd.options:
            if o.key == "help" or not names_in(o, DEFAULT) and not names_in(o, "7.2"):
                continue
            out += [".TP", _names_roff(o), _roff(_text(o))]
    out += [
        ".SH ENVIRONMENT",
        ".TP",
        ".B QIMG_COMPAT",
        "The qemu\\-img version whose behaviour qimg reproduces: \\fB10.0\\fR (the default) or",
        "\\fB7.2\\fR. It decides the options each command has, the help texts, the messages, the",
        "output and the exit codes.",
        ".TP",
        ".B QIMG_UNTRUSTED",
        "1 does what \\fB\\-\\-untrusted\\fR does: open nothing an image names, limit memory and time.",
        ".TP",
        ".B QIMG_DISABLE_PLUGINS",
        "Comma\\-separated names of plugins not to load.",
        ".SH EXIT STATUS",
        "As qemu\\-img's: 0 on success, 1 on errors; \\fBcheck\\fR and \\fBcompare\\fR have their own codes",
        "(see their pages in qimg's documentation).",
        ".SH SEE ALSO",
        ".BR qemu\\-img (1)",
        "",
    ]
    return "\n".join(out)


# -- shell completions ---------------------------------------------------------------------------

_CACHE_MODES = "none writeback writethrough directsync unsafe"
#: how a shell gets the installed formats: from ``--help`` (both profiles' layouts)
_FORMATS_SED = "sed -n -e 's/^Supported formats: //p' -e '/^Supported image formats:/,/^See /s/^  //p'"


def _words(o: Opt) -> str:
    """Fixed words an option's argument may be (its ``complete`` list)."""
    c = o.complete
    if c == "cache":
        return _CACHE_MODES
    if c in ("file", "format", ""):
        return ""
    return c


def _all_option_names(cmd: Command) -> list[str]:
    seen: list[str] = []
    for o in cmd.options:
        for p in PROFILES:
            for n in names_in(o, p):
                if n not in seen:
                    seen.append(n)
    return seen


def bash_completion() -> str:
    """A bash completion for ``qimg`` (self-contained: no bash-completion package needed)."""
    g = global_options()
    lines = [
        "# bash completion for qimg, generated from its option tables (python -m qimg_cli.gen bash)",
        "_qimg_formats() {",
        '    if [ -z "${_qimg_format_list+x}" ]; then',
        f'        _qimg_format_list=$("$1" --help 2>/dev/null | {_FORMATS_SED} | tr -s " " "\\n")',
        "    fi",
        '    printf "%s\\n" "$_qimg_format_list"',
        "}",
        "_qimg() {",
        "    local cur prev cmd i w",
        '    cur=${COMP_WORDS[COMP_CWORD]}',
        '    prev=${COMP_WORDS[COMP_CWORD-1]}',
        '    cmd=""',
        "    i=1",
        "    while [ $i -lt $COMP_CWORD ]; do",
        '        w=${COMP_WORDS[i]}',
        '        case $w in',
        "            -T|--trace) i=$((i + 2)); continue ;;",
        "            -*) ;;",
        '            *) cmd=$w; break ;;',
        "        esac",
        "        i=$((i + 1))",
        "    done",
        "    COMPREPLY=()",
        '    if [ -z "$cmd" ]; then',
        '        case $prev in -T|--trace) return 0 ;; esac',
        '        if [[ $cur == -* ]]; then',
        '            COMPREPLY=($(compgen -W "' + " ".join(_all_option_names(g)) + '" -- "$cur"))',
        "        else",
        '            COMPREPLY=($(compgen -W "' + " ".join(NAMES) + ' $(_qimg_plugin_commands)" -- "$cur"))',
        "        fi",
        "        return 0",
        "    fi",
        '    case $cmd in',
    ]
    for name in NAMES:
        cmd = command(name)
        assert cmd is not None
        lines.append(f"        {name})")
        lines.append('            case $prev in')
        for o in cmd.options:
            if not o.arg:
                continue
            names = "|".join(n for p in PROFILES for n in names_in(o, p) if True)
            names = "|".join(dict.fromkeys(names.split("|")))
            if o.complete == "format":
                action = 'COMPREPLY=($(compgen -W "$(_qimg_formats "${COMP_WORDS[0]}")" -- "$cur"))'
            elif o.complete == "file":
                action = 'COMPREPLY=($(compgen -f -- "$cur"))'
            elif _words(o):
                action = f'COMPREPLY=($(compgen -W "{_words(o)}" -- "$cur"))'
            else:
                action = ":"
            lines.append(f"                {names}) {action}; return 0 ;;")
        lines.append("            esac")
        lines.append('            if [[ $cur == -* ]]; then')
        lines.append('                COMPREPLY=($(compgen -W "' + " ".join(_all_option_names(cmd)) + '" -- "$cur"))')
        if cmd.positionals == "dd":
            lines += [
                '            elif [[ $cur == if=* || $cur == of=* ]]; then',
                '                COMPREPLY=($(compgen -P "${cur%%=*}=" -f -- "${cur#*=}"))',
                "            else",
                '                COMPREPLY=($(compgen -W "bs= count= skip= if= of=" -- "$cur"))',
                "                compopt -o nospace 2>/dev/null",
            ]
        else:
            lines += ["            else", '                COMPREPLY=($(compgen -f -- "$cur"))']
        lines += ["            fi", "            ;;"]
    lines += [
        "    esac",
        "    return 0",
        "}",
        "_qimg_plugin_commands() {",
        '    "${COMP_WORDS[0]}" --help 2>/dev/null | sed -n "/^Recognized commands/,/^Supported image formats/s/^  \\([a-z0-9_-]*\\) - .*/\\1/p"'
        ' | grep -vxF "$(printf "%s\\n" ' + " ".join(NAMES) + ')"',
        "}",
        "complete -o filenames -o bashdefault -F _qimg qimg",
        "",
    ]
    return "\n".join(lines)


# -- the options section of each command's page (docs/commands/NAME.md) -------------------------

# -- zsh -----------------------------------------------------------------------------------------

def _zsh_quote(text: str) -> str:
    """``text`` inside a single-quoted zsh word (``'`` closes, escapes, reopens)."""
    return text.replace("'", "'\\''")


def _zsh_spec(o: Opt) -> str:
    """One ``_arguments`` spec: the option's names in any profile, its text, its argument."""
    names = [n.rstrip("~!") for n in _all_option_names_of(o)]
    text = description(o) or o.about or ""
    text = text.replace("[", "(").replace("]", ")").replace("\\", "")
    text = text[:70].rsplit(" ", 1)[0] + "..." if len(text) > 72 else text
    exclusive = "" if o.repeat else "(" + " ".join(names) + ")"
    star = "*" if o.repeat else ""
    if o.arg:
        if o.complete == "format":
            action = "_qimg_formats"
        elif o.complete == "file":
            action = "_files"
        elif _words(o):
            action = "(" + _words(o) + ")"
        else:
            action = " "
        arg = ":" + (argname(o).lower() or "arg").replace(":", " ") + ":" + action
    else:
        arg = ""
    specs = []
    for n in names:
        eq = "=" if o.arg and n.startswith("--") else ("+" if o.arg else "")
        specs.append(f"'{_zsh_quote(exclusive + star + n + eq + '[' + text + ']' + arg)}'")
    return " \\\n        ".join(specs)


def _all_option_names_of(o: Opt) -> list[str]:
    seen: list[str] = []
    for p in PROFILES:
        for n in names_in(o, p):
            if n not in seen:
                seen.append(n)
    return seen


def zsh_completion() -> str:
    """A zsh completion for ``qimg`` (``#compdef qimg``, for a directory on ``$fpath``): the
    same tables and the same formats (from ``--help``) as the bash one."""
    g = global_options()
    out = [
        "#compdef qimg",
        "# zsh completion for qimg, generated from its option tables (python -m qimg_cli.gen zsh)",
        "",
        "_qimg_formats() {",
        "    local -a fmts",
        f'    fmts=(${{=$("${{_qimg_prog:-qimg}}" --help 2>/dev/null | {_FORMATS_SED})}})',
        "    compadd -a fmts",
        "}",
        "",
        "_qimg_commands() {",
        "    local -a cmds",
        "    cmds=(",
    ]
    from .tables import SUMMARIES

    for name in NAMES:
        out.append(f"        '{_zsh_quote(name + ':' + SUMMARIES[name].replace(':', ' '))}'")
    out += [
        "    )",
        "    _describe -t commands 'qimg command' cmds",
        "}",
        "",
    ]
    for name in NAMES:
        cmd = command(name)
        assert cmd is not None
        specs = [_zsh_spec(o) for o in cmd.options]
        if cmd.positionals == "dd":
            rest = "'*:dd operand:_qimg_dd_operands'"
        else:
            rest = "'*:file:_files'"
        out.append(f"_qimg_{name}() {{")
        out.append("    _arguments -s -S \\")
        out += [f"        {s} \\" for s in specs]
        out.append(f"        {rest}")
        out += ["}", ""]
    out += [
        "_qimg_dd_operands() {",
        "    if compset -P '(if|of)='; then",
        "        _files",
        "    else",
        "        compadd -S '' bs= count= skip= if= of=",
        "    fi",
        "}",
        "",
        "_qimg() {",
        "    local curcontext=$curcontext state line _qimg_prog=$words[1]",
        "    typeset -A opt_args",
        "    _arguments -C -s \\",
        *[f"        {_zsh_spec(o)} \\" for o in g.options],
        "        '1:command:_qimg_commands' \\",
        "        '*::argument:->command'",
        "    case $state in",
        "        command)",
        '            curcontext="${curcontext%:*:*}:qimg-$words[1]:"',
        "            if (( $+functions[_qimg_$words[1]] )); then",
        "                _qimg_$words[1]",
        "            else",
        "                _files",
        "            fi",
        "            ;;",
        "    esac",
        "}",
        "",
        '_qimg "$@"',
        "",
    ]
    return "\n".join(out)


DOCS_BEGIN = "<!-- options: generated from the option table by `python -m qimg_cli.gen docs`; edit the table -->"
DOCS_END = "<!-- end of generated options -->"
DOCS_HEADING = "## Every option, by profile"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _md_names(names: list[str], arg: str) -> str:
    return ", ".join(f"`{_md(n)}`" for n in names) + (f" `{_md(arg)}`" if arg else "")


def options_markdown(cmd: Command) -> str:
    """The "Options" section of ``cmd``'s page: every option with its names in the default
    profile, in QIMG_COMPAT=7.2 where they differ, and its description."""
    rows = [
        DOCS_HEADING,
        "",
        DOCS_BEGIN,
        "",
        f"In the order of qemu-img {DEFAULT}'s option table (`qimg {cmd.name} --help` prints its help).",
        "",
        "| option | with QIMG_COMPAT=7.2 | what it does |",
        "| --- | --- | --- |",
    ]
    for o in cmd.options:
        new, old = names_in(o, DEFAULT), names_in(o, "7.2")
        if not new and not old:
            continue
        arg = argname(o)
        then = "the same" if old == new else (_md_names(old, arg) if old else "not available")
        rows.append(f"| {_md_names(new, arg) if new else 'not available'} | {then} | {_md(_text(o))} |")
    rows += ["", DOCS_END]
    return "\n".join(rows) + "\n"


def update_page(text: str, cmd: Command) -> str:
    """A command page with its options section replaced (or appended)."""
    section = options_markdown(cmd)
    begin = text.find(DOCS_HEADING + "\n\n" + DOCS_BEGIN)
    if begin < 0:
        return text.rstrip("\n") + "\n\n" + section
    end = text.index(DOCS_END, begin) + len(DOCS_END) + 1
    return text[:begin] + section + text[end:]


def main(argv: list[str] | None = None) -> int:
    """``python -m qimg_cli.gen man|bash [-o FILE]``, or ``docs [DIR]`` (rewrite the options
    section of each command's page in DIR, default docs/commands)"""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["docs"]:
        import os

        folder = args[1] if len(args) > 1 else os.path.join("docs", "commands")
        for cmd in commands():
            path = os.path.join(folder, f"{cmd.name}.md")
            with open(path) as f:
                text = f.read()
            new = update_page(text, cmd)
            if new != text:
                with open(path, "w") as f:
                    f.write(new)
        return 0
    out = None
    if "-o" in args:
        i = args.index("-o")
        out = args[i + 1]
        del args[i:i + 2]
    if len(args) != 1 or args[0] not in ("man", "bash", "zsh"):
        sys.stderr.write("usage: python -m qimg_cli.gen man|bash|zsh [-o FILE] | docs [DIR]\n")
        return 2
    if args[0] == "man":
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("qimg-cli")
        except PackageNotFoundError:
            v = "0"
        text = man_page(v)
    elif args[0] == "zsh":
        text = zsh_completion()
    else:
        text = bash_completion()
    if out is None:
        sys.stdout.write(text)
    else:
        with open(out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
