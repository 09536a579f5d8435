"""A user's supervisor configuration, for `saga-supervisor run --app tests._app:make`."""

from __future__ import annotations

import os

from supervisor import Supervisor

from .conftest import HOST_ARGV
from .sagas import StepperSaga


def make() -> Supervisor:
    sup = Supervisor(os.environ["SAGA_TEST_DATA"], workers=2, host=HOST_ARGV,
                     engine=os.environ.get("SAGA_TEST_ENGINE", "thread"))
    sup.register_kind(StepperSaga)
    return sup
