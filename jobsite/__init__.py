# Runs before jobsite/__main__.py is even compiled, so any Python (2.7 and 3.x alike) gets this one line, not a traceback.
import sys

if sys.version_info < (3, 11):  # noqa: UP036 - the point: refuse what pyproject.toml refuses
    sys.exit("Jobsite needs Python 3.11 or newer; this is Python %s (%s)." % (sys.version.split()[0], sys.executable))  # noqa: UP031 - parses on Python 2
