"""Every shell command of the README still parses: `uplift <subcommand>` lines resolve with `--print_config`,
`uplift-features` / `uplift-upscale` lines parse with their own parsers, `make` lines name existing targets and
`python <script>` lines name existing files. Nothing is run (the paths in them are examples)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The README's bash lines: comments cut, backslash continuations joined, prose (`source`) dropped."""
    text = (REPO / "README.md").read_text()
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        pending = ""
        for raw in block.splitlines():
            line = re.split(r"\s+#", raw, maxsplit=1)[0].strip() if not raw.lstrip().startswith("#") else ""
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line, pending = (pending + line).strip(), ""
            if line:
                lines.append(line)
    return lines


COMMANDS = readme_commands()


def test_the_readme_has_commands_of_every_kind() -> None:
    firsts = {shlex.split(c)[0] for c in COMMANDS}
    assert {"uplift", "uplift-features", "uplift-upscale", "make", "python"} <= firsts, firsts


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("uplift ")])
def test_uplift_command_resolves(command: str, capsys) -> None:
    from tasks.cli import main

    args = shlex.split(command)[1:]
    args = [a for a in args if a != "..."]  # `--data.root ...`: an elided path
    if "--data.root" in args and args[args.index("--data.root") + 1].startswith("--"):
        args.insert(args.index("--data.root") + 1, "/data")
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--print_config"])
    assert exit_.value.code in (0, None), capsys.readouterr().err[-2000:]


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.split()[0] in ("uplift-features", "uplift-upscale")])
def test_script_command_parses(command: str) -> None:
    from uplift import features, upscale

    name, *args = shlex.split(command)
    module = features if name == "uplift-features" else upscale
    parsed = module.build_parser().parse_args(args)
    assert parsed.input and parsed.output


def test_make_and_python_commands_name_what_exists() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z0-9-]+):", makefile, re.M))
    for command in COMMANDS:
        words = shlex.split(command)
        if words[0] == "make":
            assert words[1] in targets, command
            for assignment in words[2:]:
                assert re.match(r"^(SCALE|ARGS|BASELINE)=", assignment), command
        elif words[0] == "python" and words[1].endswith(".py"):
            assert (REPO / words[1]).is_file(), command
