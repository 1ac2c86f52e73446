"""What the conformance run does not run on the loop under test, and why.

The bar for an entry: a user's program could not observe the difference. A test that pokes
the stdlib loop's private machinery (``_ready``, ``_scheduled``, ``_run_once``, ``_selector``,
``_make_*_transport``, a mocked ``socket``/``signal`` module inside ``asyncio.*_events``) is
excluded; a test that fails because ferroloop lacks a feature, or differs in an exception
type or message, is *not*: it is reported as a failure.

Not listed here, and not exclusions: the stdlib-loop instantiations of loop-generic mixins
(``test_events.SelectEventLoopTests`` and friends), which ``adapters.py`` replaces by the same
mixin on the loop under test, and tests that never build a loop of the kind under test (they
run, on CPython's mock ``TestLoop`` for instance, and are reported as loop-independent).

Keys are test ids without the ``test.test_asyncio.`` prefix: a module, a class or one test.
Ids that a Python version does not have are ignored.
"""

from __future__ import annotations

# Modules not run at all.
MODULES: dict[str, str] = {
    "test_selector_events": "white-box: SelectorEventLoop and its transports over a mock selector",
    "test_proactor_events": "Windows-only: ProactorEventLoop internals, mocked",
    "test_windows_events": "Windows-only",
    "test_windows_utils": "Windows-only",
}


def _private(what: str) -> str:
    return f"white-box: BaseEventLoop's private {what}"


def _in(prefix: str, entries: dict[str, str]) -> dict[str, str]:
    return {f"{prefix}.{name}": reason for name, reason in entries.items()}


_NOT_INVOLVED = "the loop under test is not involved"

# Classes and tests that would run on the loop under test.
# Not here although they peek at BaseEventLoop._ready/_scheduled:
# test_base_events.BaseEventLoopTests.test_call_soon / test_call_later. They also check
# isinstance(handle, asyncio.Handle / asyncio.TimerHandle), which a user can see; ferroloop
# passes them (its loop._ready/_scheduled are read-only snapshots).
TESTS: dict[str, str] = {
    # EventLoopTestsMixin, instantiated on the loop under test by adapters.py.
    **_in(
        "test_events.EventLoopTests",
        {
            "test_internal_fds": "white-box: the selector loop's self-pipe (_internal_fds, _ssock)",
            "test_timeout_rounding": _private("_run_once (counts iterations), _clock_resolution"),
            "test_create_server_multiple_hosts_ipv4": "white-box: its helper mocks the socket "
            "module inside asyncio.base_events and the loop's _start_serving",
            "test_create_server_multiple_hosts_ipv6": "white-box: its helper mocks the socket "
            "module inside asyncio.base_events and the loop's _start_serving",
            "test_prompt_cancellation": "white-box: ends with the selector loop's _stop_serving()",
        },
    ),
    # BaseEventLoop over a mock selector; adapters.py puts the loop under test in its place.
    **_in(
        "test_base_events.BaseEventLoopTests",
        {
            "test_not_implemented": _private("_make_*_transport and _process_events hooks"),
            "test__add_callback_handle": _private("_add_callback and _ready"),
            "test__add_callback_cancelled_handle": _private("_add_callback and _ready"),
            "test__run_once": _private("_run_once and _scheduled"),
            "test__run_once_schedule_handle": _private("_run_once and _scheduled"),
            "test__run_once_cancelled_event_cleanup": _private("_timer_cancelled_count"),
            "test_set_exc_handler_custom": _private("_run_once (drives an iteration by hand)"),
            "test_set_exc_handler_broken": _private("_run_once (drives an iteration by hand)"),
            "test_single_selecter_event_callback_after_stopping": _private("_process_events"),
            "test_run_forever_pre_stopped": _private("_selector (asserts select(0) was called)"),
            "test_default_exc_handler_broken": f"its own BaseEventLoop subclass; {_NOT_INVOLVED}",
            "test_create_task": f"its own BaseEventLoop subclass; {_NOT_INVOLVED}",
            "test_custom_run_forever_integration": _private(
                "_run_forever_setup/_run_once/_run_forever_cleanup, _process_events count"
            ),
            "test_env_var_debug": f"the stdlib loop in a child interpreter; {_NOT_INVOLVED}",
        },
    ),
    **_in(
        "test_base_events.BaseEventLoopWithSelectorTests",
        {
            "test_create_connection_multiple_errors_local_addr": _private("_add_reader (mocked)"),
            "test_create_connection_ipv6_scope": _private("_add_reader/_add_writer (mocked)"),
            "test_create_connection_service_name": _private("_add_reader/_add_writer (mocked)"),
            "test_create_datagram_endpoint_ip_addr": _private("_add_reader (mocked)"),
            "test_create_connection_ssl_server_hostname_default": _private("_make_ssl_transport"),
            "test_accept_connection_retry": _private("_accept_connection"),
            "test_accept_connection_exception": _private("_accept_connection, _start_serving"),
        },
    ),
    **_in(
        "test_unix_events",
        {
            "SelectorEventLoopSignalTests": "white-box: _handle_signal, mocked signal",
            "SelectorEventLoopUnixSockSendfileTests": "white-box: _sock_sendfile_native, _selector",
        },
    ),
    **_in(
        "test_subprocess",
        {
            "GenericWatcherTests": "child watchers: the stdlib loop's reaping (gone in 3.14)",
        },
    ),
}

# Failures that docs/compatibility.md lists as deliberate differences. They still count as
# failures (a user can see them); the report labels them so nobody chases them as bugs.
KNOWN_DIFFERENCES: dict[str, str] = {}

# A test decorated with mock.patch of one of these is white-box: it replaces a module that
# the stdlib loop's implementation imported, which the loop under test does not use.
MOCK_PATCH_TARGETS: dict[str, str] = {
    "asyncio.base_events.socket": "white-box: mocks the socket module inside asyncio.base_events",
    "asyncio.unix_events.socket": "white-box: mocks the socket module inside asyncio.unix_events",
    "asyncio.unix_events.signal": "white-box: mocks the signal module inside asyncio.unix_events",
    "asyncio.selector_events.": "white-box: mocks a name inside asyncio.selector_events",
}


def reason_for(test_id: str) -> str | None:
    """The exclusion reason for a test id (module.Class.test), or None."""
    module, _, rest = test_id.partition(".")
    if module in MODULES:
        return MODULES[module]
    cls = f"{module}.{rest.partition('.')[0]}"
    return TESTS.get(test_id) or TESTS.get(cls)


def reason_for_patch(target: str) -> str | None:
    """The exclusion reason for a test that mock.patches ``target``, or None."""
    for prefix, reason in MOCK_PATCH_TARGETS.items():
        if target == prefix or (prefix.endswith(".") and target.startswith(prefix)):
            return reason
    return None
