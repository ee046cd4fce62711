"""qimg.testing's driver conformance suite, run for every installed format that can create
images (raw; qcow2 and others when installed). The demo plugin runs it in its own venv
(tests/test_plugins.py)."""
import pytest

# assertion rewriting for the suite's module: before it is imported (a conftest.py needs no such line)
pytest.register_assert_rewrite("qimg.testing")

from qimg.testing import FormatConformance, creatable_formats  # noqa: E402

pytest_plugins = ["qimg.testing"]


def test_raw_is_covered():
    # the suite must not silently run for no format at all
    assert "raw" in creatable_formats()


class TestConformance(FormatConformance):
    pass
