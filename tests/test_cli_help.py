"""`deconvjax --help` lists every subcommand with its own summary without importing them."""

import subprocess
import sys

from click.testing import CliRunner

from deconvjax import cli


def test_listed_summaries_are_the_commands_own():
    for name in cli._COMMANDS:
        command = cli.load_command(name)
        limit = 100
        assert cli._COMMANDS[name][1] == command.get_short_help_str(limit=limit), name


def test_help_imports_no_subcommand():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from deconvjax.cli import main\n"
        "res = CliRunner().invoke(main, ['--help'])\n"
        "assert res.exit_code == 0, res.output\n"
        "assert 'train-prior' in res.output and 'sample' in res.output\n"
        "print(sorted(m for m in sys.modules if m.startswith(('deconvjax.diffusion', 'deconvjax.posterior', 'diffrax'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_lazy_commands_still_run():
    res = CliRunner().invoke(cli.main, ["sample", "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage: main sample" in res.output
