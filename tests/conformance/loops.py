"""The loop under test, and the counters that prove every scored test really ran on it.

``ferroloop``: ``ferroloop.new_event_loop()`` for the loop-generic mixins, and
``ferroloop.EventLoopPolicy`` as the event loop policy, re-installed whenever a test resets the
policy to ``None`` (test_asyncio's ``tearDownModule`` and several tests do), so that
``asyncio.new_event_loop()``, ``asyncio.run()``, ``asyncio.Runner()`` and
``IsolatedAsyncioTestCase`` all build ferroloop loops.

``asyncio``: the stdlib ``SelectorEventLoop`` and the stdlib default policy; the same tests,
to tell ferroloop bugs from tests that fail on this machine anyway.

Every loop constructed in the worker is counted by kind: ``lut`` (the loop under test),
``mock`` (test_asyncio's virtual-time ``TestLoop``) and ``other`` (any other stdlib loop). A
test that built no ``lut`` loop did not test the loop and is reported as loop-independent.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import asyncio.events
import asyncio.runners
import asyncio.tasks
import importlib
import sys
from collections import Counter
from collections.abc import Callable
from unittest import mock

# Per-kind count of loops constructed so far in this process.
created: Counter[str] = Counter()

# Attributes that test_asyncio's mock-loop tests assign mocks to (they were written for
# ``BaseEventLoop`` over a mock selector) and then configure (``loop._selector.select.
# return_value = ()``). On the loop under test they are harmless extra attributes, unless the
# loop has attributes of those names itself: then the mock shadows the loop's own attribute
# for the test's code only, and the loop's own code keeps seeing its real attribute.
_MOCKED_INTERNALS = frozenset({"_selector", "_process_events", "_write_to_self"})


class LoopUnderTest:
    """Which loop a worker tests, and how test_asyncio is pointed at it."""

    def __init__(
        self,
        name: str,
        loop_class: type,
        factory: Callable[[], asyncio.AbstractEventLoop],
        policy_class: type | None,
    ) -> None:
        self.name = name
        self.loop_class = loop_class
        self.factory = factory
        self.policy_class = policy_class
        # The stdlib run keeps CPython's own mock loops where a module uses them.
        self.substitutes_mock_loops = policy_class is not None
        self._tolerant_class: type | None = None
        self.default_class: type = loop_class  # what asyncio.new_event_loop() returns

    def new_loop(self) -> asyncio.AbstractEventLoop:
        return self.factory()

    def new_mock_tolerant_loop(self) -> asyncio.AbstractEventLoop:
        """A loop under test that also takes CPython's mock-loop assignments (see above)."""
        if self._tolerant_class is None:
            self._tolerant_class = _mock_tolerant(self.loop_class)
        return self._tolerant_class()

    def install(self) -> None:
        """Count loop construction and make the policy default to the loop under test."""
        _count_constructions(self.loop_class)
        if self.policy_class is None:
            return
        policy_class = self.policy_class
        asyncio.set_event_loop_policy(policy_class())

        def _init_event_loop_policy() -> None:
            # asyncio.set_event_loop_policy(None) means "the default policy" again.
            with asyncio.events._lock:
                if asyncio.events._event_loop_policy is None:
                    asyncio.events._event_loop_policy = policy_class()

        asyncio.events._init_event_loop_policy = _init_event_loop_policy

    def before_test(self) -> None:
        """Start each test on the loop under test's policy.

        Some tests install a policy of their own and leave it (test_events.PolicyTests sets a
        stdlib policy and never restores it), which would run the module's later tests on the
        stdlib loop. The stdlib run keeps CPython's behaviour as is.
        """
        if self.policy_class is not None and not isinstance(
            asyncio.events._event_loop_policy, self.policy_class
        ):
            asyncio.set_event_loop_policy(None)

    def check(self) -> str | None:
        """Return an error if asyncio's default loop is not the loop under test."""
        before = created["lut"]
        loop = asyncio.new_event_loop()
        self.default_class = type(loop)
        try:
            if not isinstance(loop, self.loop_class) or created["lut"] != before + 1:
                return (
                    f"asyncio.new_event_loop() returned {type(loop).__module__}."
                    f"{type(loop).__qualname__}, not the loop under test "
                    f"{self.loop_class.__module__}.{self.loop_class.__qualname__}"
                )
        finally:
            loop.close()
            created["lut"] -= 1
        return None


class AsyncioGlobals:
    """The functions and classes of asyncio's modules, to put back after each test.

    A test whose setUp fails never runs its tearDown; test_events' get_event_loop tests swap
    ``asyncio.events._get_running_loop`` and friends for their pure-Python versions in setUp,
    so on the loop under test (where that setUp fails) every later test of the module would
    run with mismatched running-loop functions. The stdlib run is restored the same way.
    """

    _MODULES = (
        "asyncio",
        "asyncio.events",
        "asyncio.base_events",
        "asyncio.tasks",
        "asyncio.futures",
        "asyncio.runners",
    )
    # What adapters.py itself substitutes while a test runs (startTest runs inside it).
    _ADAPTED = frozenset({"DefaultEventLoopPolicy", "BaseEventLoop", "SelectorEventLoop"})

    def __init__(self) -> None:
        self.saved = {
            name: {
                attr: value
                for attr, value in vars(sys.modules[name]).items()
                if callable(value) and not attr.startswith("__") and attr not in self._ADAPTED
            }
            for name in self._MODULES
        }

    def restore(self) -> list[str]:
        """Put back whatever a test left replaced; return the dotted names."""
        restored = []
        for name, attrs in self.saved.items():
            module = sys.modules[name]
            for attr, value in attrs.items():
                if getattr(module, attr, None) is not value:
                    setattr(module, attr, value)
                    restored.append(f"{name}.{attr}")
        return restored


def _mock_tolerant(base: type) -> type:
    own_package = base.__module__.partition(".")[0]
    key = "_conformance_mock_shadows"

    def __setattr__(self, name, value):  # noqa: N807
        if (
            name in _MOCKED_INTERNALS
            and isinstance(value, mock.NonCallableMock)
            and hasattr(self, name)
        ):
            shadows = base.__getattribute__(self, "__dict__").setdefault(key, {})
            shadows[name] = value
            return
        base.__setattr__(self, name, value)

    def __getattribute__(self, name):  # noqa: N807
        if name in _MOCKED_INTERNALS:
            shadow = base.__getattribute__(self, "__dict__").get(key, {})
            if name in shadow:
                caller = sys._getframe(1).f_globals.get("__name__", "")
                if caller.partition(".")[0] != own_package:
                    return shadow[name]
        return base.__getattribute__(self, name)

    return type(
        base.__name__,
        (base,),
        {
            "__setattr__": __setattr__,
            "__getattribute__": __getattribute__,
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
        },
    )


def _count_constructions(lut_class: type) -> None:
    from test.test_asyncio import utils as test_utils

    base_init = asyncio.base_events.BaseEventLoop.__init__

    def base_event_loop_init(self, *args, **kwargs):
        if isinstance(self, test_utils.TestLoop):
            created["mock"] += 1
        elif isinstance(self, lut_class):
            created["lut"] += 1
        else:
            created["other"] += 1
        base_init(self, *args, **kwargs)

    asyncio.base_events.BaseEventLoop.__init__ = base_event_loop_init
    if issubclass(lut_class, asyncio.base_events.BaseEventLoop):
        return
    lut_init = lut_class.__init__

    def lut_loop_init(self, *args, **kwargs):
        created["lut"] += 1
        if lut_init is object.__init__:
            lut_init(self)
        else:
            lut_init(self, *args, **kwargs)

    # The loop class must be a Python class (DESIGN.md: "The loop object"); if it is not,
    # this fails loudly rather than scoring tests that might not have run on it.
    lut_class.__init__ = lut_loop_init


def resolve(name: str) -> LoopUnderTest:
    """``ferroloop``, ``asyncio``, or ``module:factory`` (any other loop, e.g. to try uvloop)."""
    if name == "ferroloop":
        import ferroloop

        return LoopUnderTest(
            "ferroloop", ferroloop.Loop, ferroloop.new_event_loop, ferroloop.EventLoopPolicy
        )
    if name == "asyncio":
        return LoopUnderTest(
            "asyncio", asyncio.base_events.BaseEventLoop, asyncio.SelectorEventLoop, None
        )
    module_name, _, attr = name.partition(":")
    if not attr:
        raise SystemExit(f"unknown loop {name!r}: use ferroloop, asyncio or module:factory")
    factory = getattr(importlib.import_module(module_name), attr)
    loop = factory()
    loop_class = type(loop)
    loop.close()

    class Policy(asyncio.events.BaseDefaultEventLoopPolicy):
        _loop_factory = staticmethod(factory)

    return LoopUnderTest(name, loop_class, factory, Policy)
