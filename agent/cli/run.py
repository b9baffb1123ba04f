"""`dknn-agent run`: the monitoring agent.

Its flags are generated from the settings model (`SettingFlags`), so every setting has a flag, an
environment variable and a YAML key with the same name and the same help, and a new setting cannot
be forgotten here. Secrets get no flag: a password on a command line is visible to every user of
the machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field

from agent.cli.flags import Arg, Command, SettingFlags
from agent.runtime.settings import AgentSettings

ENV_PREFIX = "DKNN_"


class RunCommand(Command):
    """Consume v1 inference events, score their DkNN credibility, quarantine low-credibility events, dead-letter
    malformed ones and serve Prometheus metrics. Every setting is a flag, a DKNN_* environment variable
    (nested with __: DKNN_KAFKA_SECURITY__SASL_MECHANISM) and a key of the YAML file given with --config;
    flags win over the environment, which wins over the file.
    """

    command_name: ClassVar[str] = "run"
    summary: ClassVar[str] = "run the monitoring agent on a stream of inference events"

    config: Path | None = Field(None, description="YAML settings file")
    strict_config: Annotated[bool, Arg(negatable=True)] = Field(
        True,
        description="refuse unknown DKNN_* environment variables, which would otherwise do nothing "
        "(default: refuse; --no-strict-config only warns)",
    )
    settings: Annotated[dict[str, Any], SettingFlags(AgentSettings, ENV_PREFIX)] = Field(
        {}, description="the settings given as flags, nested as the settings model is"
    )
    summary_every: Annotated[float | None, Arg(metavar="SECONDS")] = Field(
        None, gt=0, description="print a one-line live summary to stderr every N seconds"
    )

    def run(self) -> int:
        from agent.runtime.app import run_agent
        from agent.runtime.settings import load_settings

        settings = load_settings(self.config, self.settings, strict=self.strict_config)
        return run_agent(settings, summary_every_s=self.summary_every)
