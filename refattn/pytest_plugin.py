"""pytest plugin: check attention implementations against refattn from a user's test suite.

Loaded automatically through the ``pytest11`` entry point when refattn is installed (or with
``pytest -p refattn.pytest_plugin``; disable with ``-p no:refattn.pytest_plugin``).

Options (also as ini keys ``refattn_backends`` / ``refattn_dtypes`` / ``refattn_max_examples``)::

    pytest --refattn-backend=torch,numpy --refattn-dtype=float16,float32 --refattn-max-examples=30

Fixtures (in the manner of numpy.testing / torch.testing helpers):

``refattn_backend``  a :class:`refattn.backends.Backend`, parametrized over ``--refattn-backend``
                     (unavailable backends skip, naming what to install)
``refattn_dtype``    a dtype name, parametrized over ``--refattn-dtype`` (combinations a backend
                     cannot hold, e.g. numpy + bfloat16, skip)
``refattn_check``    ``refattn_check(fn, method="softmax", **kw) -> CheckReport``: runs
                     :func:`refattn.testing.check_attention` on the current backend and dtype and
                     fails the test with the report when a case is out of tolerance

Example (a user's test file)::

    def my_attention(q, k, v, *, mask=None, causal=False): ...

    def test_my_attention(refattn_check):
        refattn_check(my_attention, masks=["none", "causal"])

The plugin imports refattn only when a fixture is used, so it costs nothing in other test runs.
"""

from __future__ import annotations

from typing import Any

import pytest

__all__ = ["pytest_addoption", "pytest_generate_tests", "pytest_report_header",
           "refattn_backend", "refattn_dtype", "refattn_check"]

_DEFAULTS = {"backend": "numpy", "dtype": "float32", "max_examples": "25"}


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("refattn", "checking attention implementations against refattn")
    group.addoption("--refattn-backend", default=None, metavar="NAMES",
                    help="comma-separated refattn backends for the refattn_backend fixture (default numpy)")
    group.addoption("--refattn-dtype", default=None, metavar="DTYPES",
                    help="comma-separated dtypes for the refattn_dtype fixture (default float32)")
    group.addoption("--refattn-max-examples", default=None, type=int, metavar="N",
                    help="cases per refattn_check call (default 25)")
    parser.addini("refattn_backends", "default for --refattn-backend", default=_DEFAULTS["backend"])
    parser.addini("refattn_dtypes", "default for --refattn-dtype", default=_DEFAULTS["dtype"])
    parser.addini("refattn_max_examples", "default for --refattn-max-examples", default=_DEFAULTS["max_examples"])


def _opt(config: Any, name: str, ini: str) -> str:
    value = config.getoption(name)
    return str(value) if value is not None else str(config.getini(ini))


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def pytest_generate_tests(metafunc: Any) -> None:
    cfg = metafunc.config
    if "refattn_backend" in metafunc.fixturenames:
        names = _names(_opt(cfg, "--refattn-backend", "refattn_backends"))
        metafunc.parametrize("refattn_backend", names, indirect=True, ids=[f"refattn-{n}" for n in names])
    if "refattn_dtype" in metafunc.fixturenames:
        dtypes = _names(_opt(cfg, "--refattn-dtype", "refattn_dtypes"))
        metafunc.parametrize("refattn_dtype", dtypes, indirect=True, ids=dtypes)


def pytest_report_header(config: Any) -> str:
    return (f"refattn: backends={_opt(config, '--refattn-backend', 'refattn_backends')} "
            f"dtypes={_opt(config, '--refattn-dtype', 'refattn_dtypes')}")


@pytest.fixture
def refattn_backend(request: Any) -> Any:
    """The refattn Backend named by this parametrization (skips when unavailable)."""
    from refattn import backends

    name = getattr(request, "param", None) or _names(_opt(request.config, "--refattn-backend",
                                                           "refattn_backends"))[0]
    try:
        return backends.get(name)
    except backends.BackendUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def refattn_dtype(request: Any, refattn_backend: Any) -> str:
    """The dtype name of this parametrization (skips when the backend cannot hold it)."""
    from refattn._interop import FLOAT_NAMES, from_host

    name = getattr(request, "param", None) or _names(_opt(request.config, "--refattn-dtype", "refattn_dtypes"))[0]
    if name not in FLOAT_NAMES:
        msg = f"--refattn-dtype must name dtypes among {FLOAT_NAMES}, got {name!r}"
        raise pytest.UsageError(msg)
    try:
        from_host([0.0], refattn_backend, name)
    except (TypeError, AttributeError, ValueError) as exc:
        pytest.skip(f"backend {refattn_backend.name!r} has no {name}: {exc}")
    return name


@pytest.fixture
def refattn_check(request: Any, refattn_backend: Any, refattn_dtype: str) -> Any:
    """``check(fn, method="softmax", **kw)``: refattn.testing.check_attention on this backend and
    dtype; fails the test with the report's text when a case is out of tolerance."""
    from refattn.testing import check_attention

    default_n = int(_opt(request.config, "--refattn-max-examples", "refattn_max_examples"))

    def check(fn: Any, method: str = "softmax", **kw: Any) -> Any:
        kw.setdefault("max_examples", default_n)
        report = check_attention(fn, method, backend=refattn_backend, dtype=refattn_dtype, **kw)
        if not report.ok:
            pytest.fail(str(report), pytrace=False)
        return report

    return check
