"""Size parsing and printing against qemu-img's own behaviour."""
from __future__ import annotations

import pytest
from qimg.errors import QimgError
from qimg.units import parse_image_size, parse_size, size_to_str


@pytest.mark.parametrize("text,value", [
    ("0", 0), ("512", 512), ("1k", 1024), ("1K", 1024), ("1.5k", 1536), ("0.5M", 524288),
    ("1G", 1 << 30), ("1.5G", 3 << 29), ("2T", 2 << 40), ("100b", 100), ("0x10", 16), ("1P", 1 << 50),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "x", "1x", "1.5", "-1", "1kk", "0x10k", "9E"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


# qemu_strtosz's fractions (iotests 049): a double scaled to 64 fixed-point bits, rounding half
# up with a suffix; without one only a fraction that scales to zero ("1024.0") is taken
SIZE_TEXTS = ["1024.0", "1024.0b", "0.0", "1.", "1.k", "1.5", ".5k", "1.5b", "1.00001",
              "1024.0000000000000000001", "1.00000000000000000001", "0.0005k", "1.1k",
              "0.9999999999999999999999k", "9223372036854775807.0", "9223372036854775808.0",
              "18446744073709551616", "18446744073709551616.5", "18446744073709551616k",
              "20000000000000000000k", "7.99999999999E", " 5", "5 ", "+5", "0x10.0"]


@pytest.mark.parametrize("text", SIZE_TEXTS)
def test_image_size_as_qemu_img_reads_it(text, qemu_img, tmp_path):
    """`qemu-img create -f raw x SIZE`'s size (or error) is what parse_image_size makes of it."""
    theirs = qemu_img("create", "-f", "raw", str(tmp_path / "x"), text)
    try:
        mine = f"size={parse_image_size(text)}"
    except QimgError as e:
        mine = e.message.splitlines()[0]
    if theirs.stdout.startswith("Formatting"):  # the size was read (creating may still fail)
        assert theirs.stdout.strip().endswith(mine), (theirs.stdout, mine)
    else:
        assert theirs.stderr.splitlines()[0] == f"qemu-img: {mine}"


def test_image_size_messages():
    with pytest.raises(QimgError, match="Must be between 0 and 9223372036854775807"):
        parse_image_size("8E")
    with pytest.raises(QimgError, match="You may use k, M, G"):
        parse_image_size("1x")


@pytest.mark.parametrize("size", [0, 1, 512, 1023, 1024, 4096, 1019 * 1024, 1020 * 1024, 1000 * 1024,
                                  1 << 20, 1536 << 20, 999 << 20, 1000 << 30, 4 << 40, 10**12])
def test_size_to_str_matches_qemu_img(size, qemu_img, tmp_path):
    """`virtual size:` in qemu-img info uses the same formatter."""
    if size % 512:
        pytest.skip("qemu-img create rounds to sectors")
    img = tmp_path / "s.raw"
    assert qemu_img("create", "-q", "-f", "raw", str(img), str(size)).returncode == 0
    line = next(x for x in qemu_img("info", "-f", "raw", str(img)).stdout.splitlines() if x.startswith("virtual size"))
    assert line == f"virtual size: {size_to_str(size)} ({size} bytes)"
