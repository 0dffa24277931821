"""The command line: thin click commands over the library. Each group of commands lives in its own
module and registers on the one ``cli`` group in ``main``."""
