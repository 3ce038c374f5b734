"""Run the code blocks of docs/converting.rst as written.

Blocks preceded by the comment ``.. doc-test: NAME`` are concatenated per NAME (in page order) and
executed in a fresh namespace; their own ``assert`` statements are the checks (cluster recovery for
the GMM, a falling loss for the AIR-style model).
"""

import re
import textwrap
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "converting.rst"
# The comment, then a python code-block whose body is every following blank or indented line.
BLOCK = re.compile(r"^\.\. doc-test: (?P<name>[\w-]+)\n\n\.\. code-block:: python\n\n"
                   r"(?P<code>(?:(?: .*)?\n)+)", re.M)


def doc_blocks():
    groups = {}
    for match in BLOCK.finditer(DOC.read_text()):
        groups.setdefault(match["name"], []).append(textwrap.dedent(match["code"]))
    return groups


def test_doc_has_the_promised_examples():
    assert {"gmm-pyro", "gmm-numpyro", "air-pyro", "enum-pyro"} <= set(doc_blocks())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gmm-pyro", "gmm-numpyro", "air-pyro", "enum-pyro"])
def test_converting_doc_example_runs_as_written(name):
    if name.endswith("numpyro"):
        pytest.importorskip("numpyro")
    import pyro

    pyro.enable_validation(True)
    code = "\n".join(doc_blocks()[name])
    namespace = {"__name__": f"converting_doc_{name.replace('-', '_')}"}
    program = compile(code, f"docs/converting.rst[{name}]", "exec")
    if name == "air-pyro":  # its guide keeps the baselines written for TraceGraph_ELBO
        with pytest.warns(UserWarning, match=r"baseline of site 'z_pres_\d+' is ignored") as caught:
            exec(program, namespace)
        # one warning per site, on the first step
        assert sorted(str(w.message).split("'")[1] for w in caught) == [
            f"z_pres_{t}" for t in range(3)]
    else:
        exec(program, namespace)
