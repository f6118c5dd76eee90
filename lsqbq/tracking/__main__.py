import sys

from ..cli import run_command
from .cli import main

sys.exit(run_command("tracking", main))
