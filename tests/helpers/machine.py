"""What a test needs of this machine: with a tool missing, the test skips and says which
(CI sets APP_DEPLOY_NO_SKIP, and a skip fails the run there)."""

import pytest


def skip_without(check, missing, *args, **kwargs):
    """Call ``check(*args, **kwargs)``; skip the test with its message if it raises
    ``missing``. Returns what ``check`` returns."""
    try:
        return check(*args, **kwargs)
    except missing as error:
        pytest.skip(str(error))
