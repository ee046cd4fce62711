"""Build hook of qimg-cli: the man page qimg(1) and the bash and zsh completions, generated
from the option tables (qimg_cli.gen) when the wheel is built, installed with the CLI under the
environment's share/ (share/man/man1, share/bash-completion/completions, share/zsh/site-functions)."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class GeneratedFilesHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        sys.path.insert(0, self.root)  # qimg_cli from this tree (it needs nothing else to generate)
        try:
            from qimg_cli import gen
        finally:
            sys.path.remove(self.root)
        self._tmp = tempfile.mkdtemp(prefix="qimg-cli-build-")
        files = {
            "qimg.1": (gen.man_page(self.metadata.version), "share/man/man1/qimg.1"),
            "qimg.bash": (gen.bash_completion(), "share/bash-completion/completions/qimg"),
            "_qimg": (gen.zsh_completion(), "share/zsh/site-functions/_qimg"),
        }
        for name, (text, dest) in files.items():
            path = os.path.join(self._tmp, name)
            with open(path, "w") as f:
                f.write(text)
            build_data["shared_data"][path] = dest

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        shutil.rmtree(getattr(self, "_tmp", ""), ignore_errors=True)
