"""How each test_asyncio module's loop-generic tests are pointed at the loop under test.

Three ways, all applied at run time to the interpreter's own test classes:

- **instantiate** a loop-generic mixin (``EventLoopTestsMixin``, ``BaseSockTestsMixin``, ...)
  the way the module itself instantiates it for ``SelectorEventLoop``, with the loop under
  test as ``create_event_loop()`` / ``new_loop()``; the module's own stdlib instantiations
  (``SelectEventLoopTests``, ``EPollEventLoopTests``, ...) are dropped, since they test the
  stdlib loop only. Both runs (ferroloop and asyncio) use the same class, so test ids match.
- **substitute** the loop in a class whose setUp hard-codes a stdlib loop constructor
  (``asyncio.BaseEventLoop()`` with a mock selector, or ``asyncio.SelectorEventLoop()``): in the
  ferroloop run, that constructor returns the loop under test while the method runs. The
  stdlib run keeps CPython's original class.
- everything else runs unchanged, with the event loop policy pointing at the loop under test
  (see ``loops.py``).
"""

from __future__ import annotations

import contextlib
import unittest
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from unittest import mock

from .loops import LoopUnderTest


@dataclass
class Adaptation:
    """What to change in one module's test list."""

    drop: Callable[[type], bool] = lambda cls: False
    add: list[type] = field(default_factory=list)
    replace: dict[type, type] = field(default_factory=dict)

    def __add__(self, other: Adaptation) -> Adaptation:
        return Adaptation(
            drop=lambda cls: self.drop(cls) or other.drop(cls),
            add=self.add + other.add,
            replace={**self.replace, **other.replace},
        )


def _new_class(mod: ModuleType, name: str, bases: tuple[type, ...], ns: dict) -> type:
    # __module__ is the CPython module: test ids read test_events.EventLoopTests.test_x and
    # unittest runs that module's setUpModule/tearDownModule around the class.
    return type(name, bases, {"__module__": mod.__name__, "__qualname__": name, **ns})


def _loop_method(lut: LoopUnderTest) -> Callable:
    def make_loop(self):
        return lut.new_loop()

    return make_loop


def _instantiate(
    mod: ModuleType, lut: LoopUnderTest, name: str, mixin: str, *bases: type, hook: str
) -> Adaptation:
    """``name(mixin, *bases)`` with ``hook`` returning the loop under test."""
    mixin_class = getattr(mod, mixin)
    cls = _new_class(mod, name, (mixin_class, *bases), {hook: _loop_method(lut)})
    return Adaptation(
        drop=lambda c: issubclass(c, mixin_class) and c is not cls,
        add=[cls],
    )


def _substitute(cls: type, method: str, targets: tuple[str, ...], factory: Callable) -> type:
    """A same-named subclass whose ``method`` sees ``factory`` at each of ``targets``."""
    original = getattr(cls, method)

    def wrapped(self, *args, **kwargs):
        with contextlib.ExitStack() as stack:
            for target in targets:
                stack.enter_context(mock.patch(target, factory))
            return original(self, *args, **kwargs)

    return type(
        cls.__name__,
        (cls,),
        {"__module__": cls.__module__, "__qualname__": cls.__qualname__, method: wrapped},
    )


_MOCK_BASE_LOOP = ("asyncio.BaseEventLoop", "asyncio.base_events.BaseEventLoop")
_SELECTOR_LOOP = ("asyncio.SelectorEventLoop",)


def _substitutions(
    mod: ModuleType,
    lut: LoopUnderTest,
    spec: dict[str, tuple[str, tuple[str, ...]]],
    factory: Callable | None = None,
) -> Adaptation:
    """Adaptation replacing ``class name -> (method, constructor targets)`` in ``spec``."""
    if not lut.substitutes_mock_loops:
        return Adaptation()
    replace = {}
    for name, (method, targets) in spec.items():
        cls = getattr(mod, name, None)
        if cls is None:
            continue
        if factory is not None:
            make = factory
        elif targets is _MOCK_BASE_LOOP:
            # A mock selector is assigned after the BaseEventLoop() call.
            make = lut.new_mock_tolerant_loop
        else:
            make = lut.new_loop
        replace[cls] = _substitute(cls, method, targets, make)
    return Adaptation(replace=replace)


def _subclasses_of(mod: ModuleType, base_name: str) -> list[str]:
    base = getattr(mod, base_name)
    return [
        name
        for name, obj in vars(mod).items()
        if isinstance(obj, type) and issubclass(obj, base) and obj is not base
    ]


def _test_events(mod, lut):
    from test.test_asyncio import utils as test_utils

    # The policy tests build asyncio.DefaultEventLoopPolicy() (and subclasses of it) by hand;
    # on the loop under test that name means its policy, as asyncio.new_event_loop() does.
    policy_tests = _substitutions(
        mod,
        lut,
        {
            name: ("run", ("asyncio.DefaultEventLoopPolicy",))
            for name in ["PolicyTests", *_subclasses_of(mod, "GetEventLoopTestsMixin")]
        },
        factory=lut.policy_class,
    )
    return policy_tests + _instantiate(
        mod,
        lut,
        "EventLoopTests",
        "EventLoopTestsMixin",
        mod.SubprocessTestsMixin,
        test_utils.TestCase,
        hook="create_event_loop",
    )


def _test_sock_lowlevel(mod, lut):
    from test.test_asyncio import utils as test_utils

    return _instantiate(
        mod, lut, "SockTests", "BaseSockTestsMixin", test_utils.TestCase, hook="create_event_loop"
    )


def _test_sendfile(mod, lut):
    from test.test_asyncio import utils as test_utils

    return _instantiate(
        mod,
        lut,
        "SendfileTests",
        "SendfileTestsBase",
        test_utils.TestCase,
        hook="create_event_loop",
    )


def _test_buffered_proto(mod, lut):
    return _instantiate(
        mod,
        lut,
        "BufferedProtocolTests",
        "BaseTestBufferedProtocol",
        unittest.TestCase,
        hook="new_loop",
    )


def _test_server(mod, lut):
    # SelectorStartServerTests adds a loop-generic unix-socket test to the mixin's.
    adaptation = _instantiate(
        mod, lut, "StartServerTests", "SelectorStartServerTests", hook="new_loop"
    )
    base = mod.BaseStartServer
    cls = adaptation.add[0]
    adaptation.drop = lambda c: issubclass(c, base) and c is not cls
    return adaptation


def _test_sslproto(mod, lut):
    return _instantiate(
        mod, lut, "StartTLSTests", "BaseStartTLS", unittest.TestCase, hook="new_loop"
    )


def _test_subprocess(mod, lut):
    from test.test_asyncio import utils as test_utils

    # SubprocessMixin's classes differ only in the child watcher, the stdlib selector loop's
    # way to reap children; the loop under test is used as the module uses ProactorEventLoop.
    def setUp(self):  # noqa: N802
        test_utils.TestCase.setUp(self)
        self.loop = lut.new_loop()
        self.set_event_loop(self.loop)

    mixin = mod.SubprocessMixin
    cls = _new_class(mod, "SubprocessTests", (mixin, test_utils.TestCase), {"setUp": setUp})
    return Adaptation(drop=lambda c: issubclass(c, mixin) and c is not cls, add=[cls])


def _test_base_events(mod, lut):
    return _substitutions(
        mod,
        lut,
        {
            "BaseEventLoopTests": ("setUp", _MOCK_BASE_LOOP),
            "BaseEventLoopWithSelectorTests": ("setUp", _SELECTOR_LOOP),
        },
    )


def _test_pep492(mod, lut):
    return _substitutions(
        mod, lut, {name: ("setUp", _MOCK_BASE_LOOP) for name in _subclasses_of(mod, "BaseTest")}
    )


def _test_runners(mod, lut):
    return _substitutions(
        mod, lut, {name: ("new_loop", _MOCK_BASE_LOOP) for name in _subclasses_of(mod, "BaseTest")}
    )


def _test_unix_events(mod, lut):
    return _substitutions(
        mod,
        lut,
        {
            "SelectorEventLoopUnixSocketTests": ("setUp", _SELECTOR_LOOP),
        },
    )


ADAPTERS: dict[str, Callable[[ModuleType, LoopUnderTest], Adaptation]] = {
    "test_events": _test_events,
    "test_sock_lowlevel": _test_sock_lowlevel,
    "test_sendfile": _test_sendfile,
    "test_buffered_proto": _test_buffered_proto,
    "test_server": _test_server,
    "test_sslproto": _test_sslproto,
    "test_subprocess": _test_subprocess,
    "test_base_events": _test_base_events,
    "test_pep492": _test_pep492,
    "test_runners": _test_runners,
    "test_unix_events": _test_unix_events,
}


def adapt(
    modname: str, mod: ModuleType, lut: LoopUnderTest, tests: list[unittest.TestCase]
) -> tuple[list[unittest.TestCase], set[type]]:
    """The module's tests pointed at the loop under test, and the classes added for it."""
    adapter = ADAPTERS.get(modname)
    if adapter is None:
        return tests, set()
    adaptation = adapter(mod, lut)
    loader = unittest.TestLoader()
    out: list[unittest.TestCase] = []
    for test in tests:
        cls = type(test)
        if adaptation.drop(cls):
            continue
        new_cls = adaptation.replace.get(cls)
        out.append(new_cls(test._testMethodName) if new_cls else test)
    for cls in adaptation.add:
        out.extend(loader.loadTestsFromTestCase(cls))
    # Tests of an added class always count; a replaced class's tests count when they build
    # a loop under test (loops.py counts them).
    return out, set(adaptation.add)
