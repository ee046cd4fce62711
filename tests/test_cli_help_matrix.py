"""Help texts and option spellings the per-command tables do not reach (tests/test_cli_profiles
covers each option by its names): every format's ``-o help`` and ``-o ?`` in create, convert,
amend and measure, and every prefix of every long option of every command (unambiguous ones
select the option, ambiguous ones list the candidates), in both profiles against both oracles,
byte for byte (the version's build and qimg's own format list masked)."""
from __future__ import annotations

import pytest
from qimg_cli.gen import all_names
from qimg_cli.tables import NAMES, command
from test_cli_profiles import PROFILES, check, images  # noqa: F401 - the fixture

FORMATS = ["qcow2", "raw", "qed", "vdi", "vpc", "vhdx", "vmdk", "qcow", "parallels", "luks", "file"]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_o_help_of_every_format(profile, fmt, images):  # noqa: F811
    for ask in ("help", "?", "help,size=1", "size=1,?"):
        check(profile, f"create -f {fmt} -o {ask}", images, fresh=False)
        check(profile, f"create -f {fmt} -o {ask} new.img", images, fresh=False)
        check(profile, f"convert -O {fmt} -o {ask} a.raw out.img", images, fresh=False)
        check(profile, f"measure -O {fmt} -o {ask} --size 1M", images, fresh=False)
        check(profile, f"amend -f {fmt} -o {ask} a.raw", images, fresh=False)


def _prefixes() -> list[str]:
    out = []
    for name in NAMES:
        for o in command(name).options:
            for n in all_names(o):
                if n.startswith("--"):
                    out += [f"{name} {n[:k]} -Z" for k in range(3, len(n))]
    return list(dict.fromkeys(out))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("line", _prefixes())
def test_every_long_option_prefix(profile, line, images):  # noqa: F811
    check(profile, line, images, fresh=False)
