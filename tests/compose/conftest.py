"""tests/compose talks to a compose stack that tests/compose/run.sh (`make compose-test`) brought up.

A plain `pytest` has no such stack, so it collects nothing here. run.sh names the file itself, and
pytest collects a file named on its command line whatever this list says.
"""

collect_ignore = ["test_stack.py"]
