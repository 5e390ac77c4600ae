"""The command line `ncjax` (also `python -m neuralcollapse_jax`) as a function.

`main(["run", "config.yaml"])` runs the command `ncjax run config.yaml` in this process
and returns its exit status: 0 on success, 2 (with one line on stderr) for a bad
option, config or input. Arguments that the parser rejects (an unknown command) exit
through `SystemExit(2)`, as on the command line.
"""

from ._cli import main as main
