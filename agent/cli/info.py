"""`dknn-agent info`: verify a bundle and describe it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import Field

from agent.cli.flags import Arg, Command
from agent.errors import BundleError


class InfoCommand(Command):
    """Verify every hash and dimension of a bundle, then print its manifest summary."""

    command_name: ClassVar[str] = "info"
    summary: ClassVar[str] = "verify a bundle and describe it"

    artifacts: Annotated[Path, Arg(positional=True)] = Field(description="bundle directory")
    json_output: Annotated[bool, Arg(flag="--json")] = Field(False, description="print the full manifest as JSON")

    def run(self) -> int:
        from agent.engine.bundle import verify_bundle
        from agent.engine.model_factory import DEFAULT_FACTORY_MODULES, check_factory_allowed

        bundle = verify_bundle(self.artifacts, importing=False)  # info never imports the factory
        bundle.close()
        manifest = bundle.manifest
        if self.json_output:
            print(json.dumps(manifest.document(), indent=2))
            return 0
        if manifest.model.program is not None:
            trusted = "none needed: the program is read as data"
        else:
            try:
                check_factory_allowed(manifest.model.factory or "", DEFAULT_FACTORY_MODULES)
                trusted = "trusted by default"
            except BundleError:
                trusted = "pass --trust-factory / set DKNN_TRUSTED_FACTORIES to run it"
        described = manifest.describe()
        lines = [
            ("bundle", f"{self.artifacts} (verified: {len(manifest.files)} files)"),
            ("digest", f"{bundle.digest}  (pin it: --bundle-digest / DKNN_BUNDLE_DIGEST)"),
            described[0],
            ("trust", f"{trusted}; forward pass in {manifest.model.compute_dtype}"),
            *described[1:],
        ]
        for heading, line in lines:
            print(f"{heading:<10} {line}")
        return 0
