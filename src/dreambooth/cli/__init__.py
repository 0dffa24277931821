"""The command line: thin click commands over the library. Each group of commands lives in its own
module and registers on the one ``cli`` group in ``main``."""
import os as _os

# transformers warns on every import that torchvision is missing; the commands never need it (a
# library user's own setting, or none, stands: this is set only where the commands are imported).
_os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
