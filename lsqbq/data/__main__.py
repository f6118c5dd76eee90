import sys

from ..cli import run_command
from . import main

sys.exit(run_command("data", main))
