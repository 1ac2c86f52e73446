"""CPython's own ``test.test_asyncio`` run against ferroloop.

``python -m tests.conformance`` imports the interpreter's installed ``test.test_asyncio``
package at run time (nothing from it is copied here), points it at the loop under test and
runs every module in its own subprocess. See ``docs/conformance.md``.

- ``runner``: command line, scheduling of module subprocesses, timeouts, JSON output.
- ``worker``: runs one module on one loop inside a subprocess and streams per-test events.
- ``adapters``: how each module's loop-generic tests are pointed at the loop under test.
- ``exclusions``: what is not run, each entry with its reason.
- ``report``: score line and the stdlib-passes-but-ferroloop-fails comparison.
"""
